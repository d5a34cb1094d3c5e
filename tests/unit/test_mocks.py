"""Static mock rules: first match wins; empty method or pattern matches anything."""

from __future__ import annotations

from softprobe_gateway.config.loader import load_config
from softprobe_gateway.config.schema import MockRule
from softprobe_gateway.decisions.mocks import Mocks


def test_first_matching_rule_wins_and_patterns_are_searched() -> None:
    health = MockRule(path=r"^/health$", body="ok")
    payments = MockRule(method="post", host=r"pay\.example", path=r"/charges", status=402)
    anything_on_pay = MockRule(host=r"pay\.example", status=200)
    mocks = Mocks((health, payments, anything_on_pay))
    assert mocks.match("GET", "svc:80", "/health") is health
    assert mocks.match("GET", "svc:80", "/health/deep") is None
    assert mocks.match("POST", "api.pay.example:443", "/v1/charges?x=1") is payments
    assert mocks.match("GET", "api.pay.example:443", "/v1/charges") is anything_on_pay
    assert mocks.match("GET", "other:80", "/v1/charges") is None


def test_no_rules_match_nothing_and_rules_come_from_config(tmp_path) -> None:
    assert Mocks(()).match("GET", "h", "/") is None
    config = tmp_path / "gateway.yaml"
    config.write_text("mocks:\n  - {method: GET, path: '^/flags', status: 200,"
                      " headers: {content-type: application/json}, body: '{\"beta\": true}', delay_ms: 5}\n")
    rule = Mocks(load_config(config).mocks).match("get", "flags:80", "/flags/all")
    assert rule is not None and rule.headers == {"content-type": "application/json"} and rule.delay_ms == 5
