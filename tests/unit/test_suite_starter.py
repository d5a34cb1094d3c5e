"""`suite init` as a pure decision over case files' exchanges: which calls become mocks, where
(the defaults when every case makes them once, else the cases' own overrides), which get none (a
call made twice), and which cases are left out (no recorded ingress)."""

from __future__ import annotations

from pathlib import Path

from softprobe_gateway.store.model import Fields, Recording
from softprobe_gateway.suite.caseview import CaseFile
from softprobe_gateway.suite.starter import starter


def exchange(direction: str, method: str, host: str, path: str) -> Recording:
    return Recording(session_id="s", trace_id="t" * 32, span_id=f"{abs(hash((direction, host, path))):016x}"[:16],
                     parent_span_id="", service="svc", direction=direction, kind="client", method=method, host=host,
                     path=path, status=200, error=False, start_ns=0, end_ns=1, request_headers=Fields(),
                     response_headers=Fields(), request_body="", response_body="{}")


def case(tmp: Path, name: str, *exchanges: Recording) -> CaseFile:
    return CaseFile(tmp / "cases" / f"{name}.case.json", {"caseId": name}, list(exchanges))


def test_shared_calls_go_to_the_defaults_and_the_others_to_their_cases(tmp_path: Path) -> None:
    ingress = exchange("inbound", "GET", "app:8000", "/checkout?cart=1")
    price = exchange("outbound", "GET", "pricing:80", "/price?sku=1")
    stripe = exchange("outbound", "POST", "api.stripe.com", "/v1/payment_intents")
    mail = exchange("outbound", "POST", "mail:25", "/send")
    made = starter("checkout", [case(tmp_path, "a", ingress, price, stripe), case(tmp_path, "b", ingress, price, mail),
                                case(tmp_path, "c", price)], tmp_path / "suites")
    assert made.warnings == [f"{tmp_path}/cases/c.case.json: no recorded inbound request to send: left out"]
    assert (made.cases, made.mocks) == (2, 3)
    doc = made.document
    assert doc["defaults"]["mocks"] == [{"name": "get-price", "source": "case", "match": {
        "direction": "outbound", "method": "GET", "host": "pricing:80", "path": "/price"}}]
    assert doc["cases"] == [
        {"path": "../cases/a.case.json", "name": "a", "overrides": {"mocks": [{"name": "post-v1-payment-intents", "match": {
            "direction": "outbound", "method": "POST", "host": "api.stripe.com", "path": "/v1/payment_intents"},
            "source": "case"}]}},
        {"path": "../cases/b.case.json", "name": "b", "overrides": {"mocks": [{"name": "post-send", "match": {
            "direction": "outbound", "method": "POST", "host": "mail:25", "path": "/send"}, "source": "case"}]}}]
    assert doc["defaults"]["request"] == {"source": "case.ingress"}
    assert doc["defaults"]["assertions"] == {"body": {"mode": "json-subset"}}


def test_a_call_made_twice_gets_no_mock_and_same_paths_on_two_hosts_get_the_host_in_their_names(tmp_path: Path) -> None:
    ingress = exchange("inbound", "GET", "app", "/")
    twice = exchange("outbound", "GET", "cache", "/item")
    made = starter("s", [case(tmp_path, "x", ingress, twice, twice, exchange("outbound", "GET", "a.svc", "/v1"),
                          exchange("outbound", "GET", "b.svc", "/v1"))], tmp_path)
    assert [m["name"] for m in made.document["defaults"]["mocks"]] == ["get-a-svc-v1", "get-b-svc-v1"]
    assert made.warnings == [f"{tmp_path}/cases/x.case.json: GET cache /item called 2 times: no mock "
                             "(the runtime answers it from the loaded case, in recorded order)"]


def test_two_cases_with_one_id_get_distinct_names(tmp_path: Path) -> None:
    ingress = exchange("inbound", "GET", "app", "/")
    one = CaseFile(tmp_path / "1.case.json", {"caseId": "same"}, [ingress])
    two = CaseFile(tmp_path / "2.case.json", {"caseId": "same"}, [ingress])
    made = starter("s", [one, two], tmp_path)
    assert [c["name"] for c in made.document["cases"]] == ["same", "same-2"]
    assert "mocks" not in made.document["defaults"]
