"""A suite's assertions over an answer and its recording: status forms, header regular expressions,
each body mode, JSONPath ignores and redactions."""

from __future__ import annotations

import json

import pytest

from softprobe_gateway.suite.compare import AssertionSpecError, compare, paths_invalid
from softprobe_gateway.suite.results import HttpMessage

RECORDED = {"id": "pi_1", "total": 30, "items": [{"sku": "a", "price": 10}, {"sku": "b", "price": 20}],
            "createdAt": "2026-01-01T00:00:00Z", "ssn": "123-45-6789"}


def answer(body: object = None, status: int = 200, **headers: str) -> HttpMessage:
    text = body if isinstance(body, str) else json.dumps(RECORDED if body is None else body)
    return HttpMessage(status=status, headers={"content-type": "application/json", **headers}, body=text)


def where(assertions: dict, actual: HttpMessage, expected: HttpMessage | None = None) -> list[tuple[str, str]]:
    return [(d.what, d.where) for d in compare(assertions, actual, expected).diffs]


@pytest.mark.parametrize(("spec", "status", "passes"), [
    (200, 200, True), (200, 201, False),
    ([200, 201], 201, True), ([200, 201], 204, False),
    ({"min": 200, "max": 299}, 299, True), ({"min": 200, "max": 299}, 300, False),
    ({"min": 400}, 503, True), ({"max": 399}, 404, False),
])
def test_status_as_an_int_a_list_or_a_range(spec: object, status: int, passes: bool) -> None:
    assert (where({"status": spec}, answer(status=status)) == []) is passes


def test_status_unstated_is_the_recorded_one_else_any_2xx() -> None:
    assert where({}, answer(status=204)) == []
    assert where({}, answer(status=500)) == [("status", "")]
    assert where({"body": {"mode": "ignore"}}, answer(status=201), answer(status=200)) == [("status", "")]


def test_a_bad_status_spec_is_named() -> None:
    with pytest.raises(AssertionSpecError, match="assertions.status"):
        compare({"status": "200"}, answer(), None)


def test_header_include_regexes_must_be_present_and_match() -> None:
    spec = {"headers": {"include": {"content-type": "^application/json", "etag": ".+", "x-trace": "^t-"}}}
    diffs = compare(spec, answer(etag='"v1"', **{"x-trace": "u-1"}), None).diffs
    assert [(d.where, d.reason) for d in diffs] == [("x-trace", "does not match")]
    diffs = compare(spec, HttpMessage(status=200, headers={"Content-Type": "text/plain"}), None).diffs
    assert [(d.where, d.reason) for d in diffs] == [("content-type", "does not match"), ("etag", "missing"),
                                                     ("x-trace", "missing")]
    assert where({"headers": {"include": {"etag": ".+"}, "ignore": ["ETag"]}}, answer(), None) == []
    with pytest.raises(AssertionSpecError, match="bad regular expression"):
        compare({"headers": {"include": {"etag": "("}}}, answer(), None)


def test_json_subset_lets_the_answer_add_fields_but_not_change_or_drop_them() -> None:
    recorded = answer()
    assert where({}, answer({**RECORDED, "new": True}), recorded) == []
    changed = {**RECORDED, "total": 31, "items": [{"sku": "a", "price": 10, "x": 1}, {"sku": "b", "price": 21}]}
    assert where({}, answer(changed), recorded) == [("body", "$.total"), ("body", "$.items[1].price")]
    dropped = {k: v for k, v in RECORDED.items() if k != "ssn"}
    assert [(d.where, d.reason) for d in compare({}, answer(dropped), recorded).diffs] == [("$.ssn", "missing")]
    assert where({}, answer({**RECORDED, "items": RECORDED["items"][:1]}), recorded) == [("body", "$.items")]
    assert where({}, answer({**RECORDED, "total": 30.0}), recorded) == []  # the same JSON number
    assert where({}, answer({**RECORDED, "total": "30"}), recorded) == [("body", "$.total")]


def test_exact_refuses_an_added_field() -> None:
    assert where({"body": {"mode": "exact"}}, answer({**RECORDED, "new": 1}), answer()) == [("body", "$.new")]
    assert where({"body": {"mode": "exact"}}, answer(), answer()) == []


def test_string_compares_the_bytes_and_ignore_compares_nothing() -> None:
    spaced = json.dumps(RECORDED, indent=2)
    assert where({"body": {"mode": "string"}}, answer(spaced), answer()) == [("body", "$")]
    assert where({}, answer(spaced), answer()) == []  # the same JSON
    assert where({"body": {"mode": "ignore"}}, answer("not even json"), answer()) == []
    assert where({}, answer("plain text"), answer("plain text")) == []  # a recording that is not JSON: as text
    assert where({}, answer("not json"), answer()) == [("body", "$")]
    with pytest.raises(AssertionSpecError, match="assertions.body.mode"):
        compare({"body": {"mode": "subset"}}, answer(), answer())


def test_body_ignore_takes_jsonpaths_out_of_both_sides() -> None:
    fresh = {**RECORDED, "id": "pi_2", "createdAt": "2026-12-07T05:00:00Z",
             "items": [{"sku": "a", "price": 10, "line": 7}, {"sku": "b", "price": 20, "line": 8}]}
    assert where({}, answer(fresh), answer()) == [("body", "$.id"), ("body", "$.createdAt")]
    assert where({"body": {"ignore": ["$.id", "$.createdAt"]}}, answer(fresh), answer()) == []
    renumbered = {**RECORDED, "items": [{"sku": "x", "price": 10}, {"sku": "y", "price": 20}]}
    assert where({"body": {"ignore": ["$.items[*].sku"]}}, answer(renumbered), answer()) == []
    assert where({"body": {"mode": "exact", "ignore": ["$..line", "$.id", "$.createdAt"]}}, answer(fresh), answer()) == []
    assert paths_invalid(["$.ok", "$.[", "$.items[*].id"]) == ["'$.[': not a JSONPath: Parse error near the end of string!"]


def test_redactions_apply_to_both_sides_and_to_what_is_kept() -> None:
    leaked = {**RECORDED, "ssn": "987-65-4321"}
    spec = {"body": {"redactions": [{"path": "$.ssn", "replacement": "***-**-****"}]}}
    outcome = compare(spec, answer(leaked), answer())
    assert outcome.diffs == [] and "987-65" not in outcome.body and json.loads(outcome.body)["ssn"] == "***-**-****"
    outcome = compare(spec, answer({**leaked, "total": 99}), answer())
    assert [(d.where, d.expected, d.actual) for d in outcome.diffs] == [("$.total", 30, 99)]
    assert "987-65" not in json.dumps([d.actual for d in outcome.diffs]) + outcome.body


def test_no_recording_checks_only_what_the_suite_states() -> None:
    assert where({"status": 200}, answer({"anything": 1}), None) == []
