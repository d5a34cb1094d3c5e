"""How `softprobe show` lays a session out (pure functions over recorded exchanges): the tree of
calls, and bodies as what they are, bounded, whatever a recorded body holds."""

from __future__ import annotations

import json

from softprobe_gateway.cli.timeline import PREVIEW_LINES, WIDTH, body_lines, nest
from softprobe_gateway.store.model import Fields, Recording


def exchange(span: str, parent: str = "", trace: str = "t1", start: int = 0) -> Recording:
    return Recording("s", trace, span, parent, "svc", "outbound", "client", "GET", "h", f"/{span}", 200, False,
                     start, start + 1, Fields(), Fields(), "", "")


def test_calls_nest_under_their_parent_depth_first_and_orphans_stay_at_the_top() -> None:
    root, a, b, a1 = exchange("root", start=1), exchange("a", "root", start=2), exchange("b", "root", start=4), \
        exchange("a1", "a", start=3)
    other_trace = exchange("x", "root", trace="t2", start=5)  # same parent span id, another trace
    orphan = exchange("o", "gone", start=6)
    assert [(d, ex.span_id, p) for d, ex, p in nest([root, a, a1, b, other_trace, orphan])] == [
        (0, "root", ""), (1, "a", "root"), (2, "a1", "a"), (1, "b", "root"), (0, "x", ""), (0, "o", "")]


def test_a_parent_that_started_later_is_no_parent_so_a_cycle_cannot_hide_exchanges() -> None:
    first, second = exchange("p", "q", start=1), exchange("q", "p", start=2)
    assert [(d, ex.span_id) for d, ex, _ in nest([first, second])] == [(0, "p"), (1, "q")]
    assert len(nest([exchange(f"{n}", f"{n + 1}", start=n) for n in range(5000)])) == 5000  # no recursion


def test_bodies_whatever_they_hold_stay_bounded() -> None:
    json_type = Fields([("content-type", "application/json")])
    deep = "[" * 3000 + "]" * 3000  # valid JSON, too deep to lay out: shown as text
    (head, line) = body_lines("response", deep, json_type, 0, "show x")[:2]
    assert head == "response (text, 6000 bytes):" and line == "  " + "[" * WIDTH + "..."
    assert body_lines("response", "[" * 100_000, json_type, 0, "show x")[0].startswith("response (text")
    wide = json.dumps([{"n": n, "pad": "y" * 300} for n in range(1000)])
    preview = body_lines("response", wide, json_type, 0, "show x")
    assert len(preview) == 1 + PREVIEW_LINES + 1 and all(len(line) <= WIDTH + 8 for line in preview)
    assert len(body_lines("response", wide, json_type, 0)) == 1 + 2 + 4 * 1000  # whole: every member, a field a line
    assert body_lines("request", "\x00\x01", Fields([("content-type", "text/plain")]), 0) == [
        "request (binary, 2 bytes, text/plain, as base64): \x00\x01"]
