"""`--detect-noise` as a pure decision: which JSONPaths two answers of the same version disagree on,
and which of a run's differences that leaves out (the replaying is tested with a real app in
tests/integration/test_suite_authoring.py)."""

from __future__ import annotations

import json

from softprobe_gateway.suite import compare, noise
from softprobe_gateway.suite.results import DiffEntry, HttpMessage


def answer(document: object, status: int = 200) -> HttpMessage:
    return HttpMessage(status=status, body=json.dumps(document))


def test_the_paths_that_differ_between_two_answers() -> None:
    first = answer({"id": "a1", "at": 1.5, "items": [{"n": 1, "ts": "x"}], "same": True, "odd key": 1, "gone": 1})
    second = answer({"id": "b2", "at": 1.5, "items": [{"n": 1, "ts": "y"}], "same": True, "odd key": 2, "new": 1})
    assert noise.noisy_paths(first, second) == ['$.id', '$.items[0].ts', '$["odd key"]', "$.gone", "$.new"]


def test_agreeing_answers_and_bodies_that_are_not_json_have_no_noisy_paths() -> None:
    assert noise.noisy_paths(answer({"a": [1, 2]}), answer({"a": [1, 2]})) == []
    assert noise.noisy_paths(HttpMessage(body="at 10:01"), HttpMessage(body="at 10:02")) == []
    assert noise.noisy_paths(answer([1]), answer({"a": 1})) == []  # another kind of root: nothing to leave out


def test_a_list_that_changes_length_is_noisy_whole() -> None:
    assert noise.noisy_paths(answer({"ids": [1]}), answer({"ids": [1, 2]})) == ["$.ids"]


def test_only_the_built_in_body_differences_under_a_noisy_path_are_left_out() -> None:
    recorded = json.dumps({"generatedAt": "2026-01-01", "meta": {"id": "r"}, "price": 329})
    run = answer({"generatedAt": "2026-12-07", "meta": {"id": "s"}, "price": 349}, status=201)
    diffs = compare.body_diffs({}, run.body, recorded) + [
        DiffEntry("status", "", 200, 201, "differs"),
        DiffEntry("body", "$.generatedAt", "x", "y", "hook says", source="checkStamp")]
    probe = answer({"generatedAt": "2026-12-06", "meta": {"id": "t"}, "price": 349}, status=200)
    kept, notes = noise.apply(diffs, probe, run)
    assert [(d.what, d.where, d.source) for d in kept] == [
        ("body", "$.price", ""), ("status", "", ""), ("body", "$.generatedAt", "checkStamp")]
    assert notes == ["noise: ignored $.generatedAt, $.meta.id (differed between two replays of the same version)",
                     "noise: status 200 then 201 in two replays: compared as usual"]


def test_a_path_covers_what_lies_under_it_only() -> None:
    assert noise.covers("$.a", "$.a") and noise.covers("$.a", "$.a.b") and noise.covers("$.a", "$.a[0]")
    assert not noise.covers("$.a", "$.ab") and not noise.covers("$.a.b", "$.a")


def test_without_a_first_answer_nothing_is_left_out_and_the_note_says_so() -> None:
    diffs = [DiffEntry("body", "$.x", 1, 2, "differs")]
    assert noise.apply(diffs, None, answer({})) == (diffs, [
        "noise: not detected: the first replay failed before the app answered"])


def test_bodies_that_differ_whole_are_noted_not_ignored() -> None:
    diffs = [DiffEntry("body", "$", "a", "b", "differs (not JSON)")]
    kept, notes = noise.apply(diffs, HttpMessage(status=200, body="a1"), HttpMessage(status=200, body="a2"))
    assert kept == diffs and notes[0].startswith("noise: the body differed between two replays as a whole")
