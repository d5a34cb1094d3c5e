"""Matching and miss diffs as pure functions: canonical forms, ignored fields, field-level diffs."""

from __future__ import annotations

from softprobe_gateway.backend.matching import Ignore, diff, parse_request, summarize


def form(path: str = "/p", body: str = "", content_type: str = "application/json",
         ignore: tuple[str, ...] = (), method: str = "POST", host: str = "api:80"):
    return parse_request(method, host, path, content_type, body, Ignore.parse(ignore))


def test_fingerprint_ignores_json_layout_query_order_and_case_of_method_and_host() -> None:
    a = form("/p?a=1&b=2", '{"x": [1, {"y": 2, "z": 3}], "w": null}')
    b = parse_request("post", "API:80", "/p?b=2&a=1", "application/json; charset=utf-8",
                      '{"w":null,"x":[1,{"z":3,"y":2}]}', Ignore())
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_keeps_list_order_and_value_types() -> None:
    assert form(body='[1, 2]').fingerprint() != form(body='[2, 1]').fingerprint()
    assert form(body='{"n": 1}').fingerprint() != form(body='{"n": "1"}').fingerprint()


def test_ignore_names_anywhere_and_dotted_paths_through_lists() -> None:
    ignore = ("ts", "items.id")
    a = form("/p?ts=1", '{"ts": 1, "items": [{"id": 1, "sku": "a"}], "deep": {"ts": 5}}', ignore=ignore)
    b = form("/p?ts=2", '{"ts": 2, "items": [{"id": 9, "sku": "a"}], "deep": {"ts": 6}}', ignore=ignore)
    assert a.fingerprint() == b.fingerprint()
    c = form("/p", '{"items": [{"id": 1, "sku": "b"}]}', ignore=ignore)
    assert a.fingerprint() != c.fingerprint()
    # a dotted path is anchored at the root: `id` elsewhere still counts
    assert form(body='{"id": 1}', ignore=ignore).fingerprint() != form(body='{"id": 2}', ignore=ignore).fingerprint()


def test_form_bodies_compare_like_queries() -> None:
    ct = "application/x-www-form-urlencoded"
    assert form(body="a=1&b=2", content_type=ct).fingerprint() == form(body="b=2&a=1", content_type=ct).fingerprint()
    assert diff(form(body="a=1&b=2", content_type=ct), form(body="a=1&b=3", content_type=ct)) == [
        "body.b: recorded '2', got '3'"]


def test_invalid_json_and_binary_bodies_compare_as_recorded() -> None:
    assert form(body="{not json").fingerprint() == form(body="{not json").fingerprint()
    assert form(body="AAEC", content_type="application/octet-stream").fingerprint() != \
        form(body="AAED", content_type="application/octet-stream").fingerprint()


def test_diff_names_each_differing_field() -> None:
    recorded = form("/pay?page=1&lang=en", '{"amount": 10, "card": {"last4": "1234"}}')
    got = form("/pay?page=2&extra=y", '{"amount": 12, "card": {}, "new": true}', method="PUT")
    assert diff(recorded, got) == [
        "method: recorded 'POST', got 'PUT'",
        "query.extra: not recorded, got 'y'",
        "query.lang: recorded 'en', missing",
        "query.page: recorded '1', got '2'",
        "body.amount: recorded 10, got 12",
        "body.card.last4: recorded '1234', missing",
        "body.new: not recorded, got true",
    ]
    assert diff(recorded, recorded) == []


def test_diff_of_text_bodies_and_summary_cap() -> None:
    lines = diff(form(body="hello", content_type="text/plain"), form(body="", content_type="text/plain"))
    assert lines == ["body: recorded 'hello' (text, 5 chars), got no body"]
    many = [f"line {n}" for n in range(20)]
    assert summarize(many)[-1] == "... and 13 more differences" and len(summarize(many)) == 8
