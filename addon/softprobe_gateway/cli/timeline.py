"""How `softprobe show` prints what was recorded: a session as a timeline, the calls a request made
nested under it, and one exchange in full; bodies as what they are (JSON laid out, text as text,
binary as its size), bounded in a timeline, whole for one exchange."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from typing import Any

from softprobe_gateway.formats.har import body_bytes, readable
from softprobe_gateway.store.model import Fields, Recording, SessionSummary

PREVIEW_LINES = 12  # lines of a body a timeline shows
WIDTH = 120  # columns a JSON body is laid out in; a timeline cuts longer lines there
INDENT = "    "  # a call under the request that made it
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # in no text: C0 controls but tab, newlines, form feed


def time_text(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="milliseconds")


def nest(exchanges: list[Recording]) -> list[tuple[int, Recording, str]]:
    """A session's exchanges (in time order) depth-first, each with its depth and its parent's
    span id: an exchange's parent is the exchange of the same trace whose span is its parent
    span and that started before it (so a cycle cannot form); one without (an orphan: its
    parent is not in the session) stays at the top, in time order."""
    position = {(ex.trace_id, ex.span_id): i for i, ex in enumerate(exchanges)}
    children: dict[int, list[int]] = {}
    roots = []
    for i, ex in enumerate(exchanges):
        parent = position.get((ex.trace_id, ex.parent_span_id), i) if ex.parent_span_id else i
        (children.setdefault(parent, []) if parent < i else roots).append(i)
    order: list[tuple[int, Recording, str]] = []
    stack = [(0, i, "") for i in reversed(roots)]
    while stack:  # not recursive: a chain of calls may be deep
        depth, i, parent_span = stack.pop()
        order.append((depth, exchanges[i], parent_span))
        stack += [(depth + 1, child, exchanges[i].span_id) for child in reversed(children.get(i, []))]
    return order


def timeline(summary: SessionSummary, exchanges: list[Recording]) -> str:
    lines = [f"session {summary.id}  service {summary.service}  {summary.exchanges} exchanges, "
             f"{summary.errors} errors  {time_text(summary.first_ns)} .. {time_text(summary.last_ns)}"]
    for depth, ex, _ in nest(exchanges):
        offset = (ex.start_ns - summary.first_ns) / 1e9
        lines.append(f"  {f'+{offset:.3f}s':>10}  {INDENT * depth}{ex.span_id[:8]}  {ex.direction or '-':8} "
                     f"{ex.method} {ex.host}{ex.path}  -> {outcome(ex)}")
        for label, body, headers, original in bodies(ex):
            lines += [f"      {INDENT * depth}{line}"
                      for line in body_lines(label, body, headers, original, f"softprobe show {ex.span_id[:8]}")]
    return "\n".join(lines)


def exchange(ex: Recording) -> str:
    """One exchange in full: request and response, headers and whole bodies."""
    lines = [f"exchange {ex.span_id}  session {ex.session_id}  service {ex.service}  {ex.direction or '-'}",
             f"{time_text(ex.start_ns)}  {ex.method} {ex.host}{ex.path}  -> {outcome(ex)}"]
    for (label, body, headers, original), prefix in zip(bodies(ex), ("> ", "< ")):
        lines.append(f"{label}:")
        lines += [f"  {prefix}{name}: {value}" for name, value in headers]
        lines += [f"  {line}" for line in body_lines("body", body, headers, original)]
    if ex.response_trailers:
        lines.append("trailers:")
        lines += [f"  < {name}: {value}" for name, value in ex.response_trailers]
    return "\n".join(lines)


def outcome(ex: Recording) -> str:
    """The status, or why the exchange failed (the span's `error.message`), its duration, and
    flags: an error, an answer from the gateway itself (not a recording: never replayed)."""
    status = str(ex.status) if ex.status else f"failed ({ex.error_message or 'no response'})"
    flags = "  ERROR" if ex.error else ""
    if ex.answered_by:
        flags += f"  [answered by the gateway: {ex.answered_by}]"
    return f"{status}  {ex.duration_ms:.1f} ms{flags}"


def bodies(ex: Recording) -> tuple[tuple[str, str, Fields, int], ...]:
    return (("request", ex.request_body, ex.request_headers, ex.request_original_size),
            ("response", ex.response_body, ex.response_headers, ex.response_original_size))


def body_lines(label: str, body: str, headers: Fields, original_size: int, whole: str = "") -> list[str]:
    """A body as `label (kind, size)` and its content: JSON laid out, text as it is, binary as
    its size alone in a preview (its base64 in full). A preview (`whole`: the command showing the
    body whole) holds PREVIEW_LINES lines of WIDTH at most. Marked when the gateway cut it at
    capture.max_body_bytes; no line at all for an empty body."""
    preview = bool(whole)
    if not body and not original_size:
        return []
    raw = body_bytes(body, headers)
    text = readable(body, raw, headers)
    if text is not None and _CONTROL.search(text):  # UTF-8, but no text (a NUL, a bell...)
        text = None
    content_type = headers.get("content-type") or ""
    limit = PREVIEW_LINES + 1 if preview else None
    kind, content = ("binary", []) if text is None else _text(text, content_type, limit)
    details = [kind, f"{len(raw)} bytes", *([content_type] if kind == "binary" and content_type else [])]
    if kind == "binary" and not preview:
        details.append("as base64")
        content = _wrap(body, 76)
    head = f"{label} ({', '.join(details)})"
    if original_size:
        head += f" [truncated: {len(raw)} of {original_size} bytes recorded]"
    if preview:
        cut = len(content) > PREVIEW_LINES
        content = [line if len(line) <= WIDTH else line[:WIDTH] + "..." for line in content[:PREVIEW_LINES]]
        content += [f"... (cut here: `{whole}` shows it whole)"] if cut else []
    if len(content) == 1 and len(head) + len(content[0]) <= WIDTH:
        return [f"{head}: {content[0]}"]
    return [f"{head}:" if content else head, *(f"  {line}" for line in content)]


def _text(text: str, content_type: str, limit: int | None) -> tuple[str, list[str]]:
    """("JSON", its first `limit` lines laid out) when the text is JSON (said so, or an object or
    array), else ("text", its first `limit` lines)."""
    if "json" in content_type.lower() or text.lstrip()[:1] in ("{", "["):
        try:
            return "JSON", list(islice(_pretty(json.loads(text), 0), limit))
        except (ValueError, RecursionError):  # not JSON after all, or nested too deep to lay out
            pass
    return "text", list(islice(text.splitlines(), limit)) or [""]


def _pretty(value: Any, indent: int, used: int = 0) -> Iterator[str]:
    """`value` as JSON lines: an object or array on one line when it fits in WIDTH (from column
    `indent` plus `used` taken by its key), else one member a line. The first line is not
    indented (it follows the key); lazily, so a preview lays out only the lines it shows."""
    flat = json.dumps(value, ensure_ascii=False)
    if indent + used + len(flat) <= WIDTH or not isinstance(value, (dict, list)) or not value:
        yield flat
        return
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    members = value.items() if isinstance(value, dict) else (("", item) for item in value)
    yield opening
    pad = " " * (indent + 2)
    for n, (key, item) in enumerate(members, 1):
        name = f"{json.dumps(key, ensure_ascii=False)}: " if isinstance(value, dict) else ""
        lines = _pretty(item, indent + 2, len(name))
        line = pad + name + next(lines)
        for following in lines:
            yield line
            line = following
        yield line + ("," if n < len(value) else "")
    yield " " * indent + closing


def _wrap(text: str, width: int) -> list[str]:
    return [text[i:i + width] for i in range(0, len(text), width)]
