"""Trace context and session (protocol section 3): continue, propagate, and count hops.

Everything here parses outside input, so it never raises on garbage: a value that does not
parse is treated as absent.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from typing import NamedTuple

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
SP_TRACEPARENT = "x-sp-traceparent"
SP_SESSION = "x-sp-session-id"
# The session's tracestate keys: Softprobe's current proxy's, then the original agent's. Both are
# read, and both written, so either kind of proxy downstream finds the session.
TRACESTATE_SESSIONS = ("x-softprobe-session-id", SP_SESSION)
# In order of precedence: Softprobe's current header (spec/protocol/session-headers.md in
# softprobe/hybrid), then the original agent's three.
SESSION_HEADERS = ("x-softprobe-session-id", "x-sp-session-id", "sp_session_id", "x-session-id")
MAX_SESSION_ID = 256
# What a session id may contain: it travels inside tracestate, so no ',', '=', spaces or controls.
_SESSION = re.compile(r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]{1,%d}" % MAX_SESSION_ID)
# A replay run's session id is `<recorded session>~<run id>`: a fresh session per run, as Softprobe
# creates one per test run, whose lookups answer from the recorded session. `~` travels unescaped
# in headers, tracestate and URLs; no generated session id (ours, Softprobe's `sess_...`) holds it.
RUN_SEPARATOR = "~"

HeaderGet = Callable[[str], "str | None"]


class SpanContext(NamedTuple):
    """The exchange's own span and its (possibly absent) remote parent, whose sampled flag is
    `parent_sampled` (None without a parent); `sampled` is this hop's decision, passed on.
    A named tuple: built twice per request, about 0.3 us against a frozen dataclass's 1 us."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes = b""
    parent_sampled: bool | None = None
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str | None) -> tuple[bytes, bytes, bool] | None:
    """(trace id, span id, sampled) of a W3C version-00 traceparent, or None (all-zero ids are
    invalid)."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if not m or m[1] == "0" * 32 or m[2] == "0" * 16:
        return None
    return bytes.fromhex(m[1]), bytes.fromhex(m[2]), bool(int(m[3], 16) & 1)


def parse_tracestate(value: str | None) -> list[tuple[str, str]]:
    """The `key=value` entries of a tracestate header, in order; malformed entries are dropped."""
    entries = []
    for item in (value or "").split(","):
        key, sep, val = item.strip().partition("=")
        if sep and key:
            entries.append((key, val))
    return entries


def new_context(tracestate: list[tuple[str, str]], traceparent: str | None) -> SpanContext:
    """A fresh span, child of the first incoming context that parses (x-sp-traceparent, then W3C)."""
    sp = next((v for k, v in tracestate if k == SP_TRACEPARENT), None)
    parent = parse_traceparent(sp) or parse_traceparent(traceparent)
    span_id = _random_id(8)
    if parent:
        return SpanContext(parent[0], span_id, parent[1], parent_sampled=parent[2])
    return SpanContext(_random_id(16), span_id)


def with_sampled(ctx: SpanContext, sampled: bool) -> SpanContext:
    """`ctx` with this hop's decision."""
    return SpanContext(ctx.trace_id, ctx.span_id, ctx.parent_span_id, ctx.parent_sampled, sampled)


def _random_id(n: int) -> bytes:
    """A non-zero random id, as OpenTelemetry's SDK draws its ids (`random.getrandbits`: ids are
    unique, not secret; no system call per request, as `secrets` would make)."""
    while True:
        if value := random.getrandbits(8 * n):
            return value.to_bytes(n, "big")


def session_id(header: HeaderGet, tracestate: list[tuple[str, str]]) -> str:
    """First valid of the session headers, the tracestate entry, else a new session."""
    return session(header, tracestate)[0]


def session(header: HeaderGet, tracestate: list[tuple[str, str]]) -> tuple[str, bool]:
    """The session id, and whether a session header of the request's own named it (a test or a
    debugging session opting in; sampling always records those).

    A value that could not travel intact in `tracestate` (a ',' or '=', a space, a control
    character) is treated as absent, so every hop reads back the session this one recorded.
    """
    for name in SESSION_HEADERS:
        if (raw := header(name)) and (value := _valid(raw)):
            return value, True
    for name in TRACESTATE_SESSIONS:
        for key, value in tracestate:
            if key == name and (value := _valid(value)):
                return value, False
    return new_session(), False


def new_session() -> str:
    """`sp-session-` and a version 4 UUID, formatted from the OS's random bytes as `uuid.uuid4()`
    formats it, at a third of its cost (once per request without a session). From the OS, not
    `random`: recordings are kept and replayed under this id, and trace ids sent upstream would
    let a peer rebuild `random`'s state and foretell the next sessions."""
    h = os.urandom(16).hex()
    return f"sp-session-{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT = "89ab"  # RFC 4122's variant bits (10xx) over the random nibble's low two bits


def _valid(value: str | None) -> str | None:
    value = (value or "").strip()[:MAX_SESSION_ID]
    return value if _SESSION.fullmatch(value) else None


def own_sessions(session: str) -> tuple[str, ...]:
    """The sessions whose recordings are a lookup session's own: itself and, for a replay run's
    id, the recorded session it names (the part before its last `~`)."""
    recorded, sep, run = session.rpartition(RUN_SEPARATOR)
    return (session, recorded) if sep and recorded and run else (session,)


def run_session(recorded: str, run_id: str) -> str:
    """The session id of one replay run of `recorded` (`run_id` holds no `~`)."""
    session = f"{recorded}{RUN_SEPARATOR}{run_id}"
    if not _SESSION.fullmatch(session):
        raise ValueError(f"session {recorded!r}: no valid session id with a run id appended "
                         f"(at most {MAX_SESSION_ID} printable characters, no ',', '=' or spaces)")
    return session


def propagated_headers(ctx: SpanContext, session: str, tracestate: list[tuple[str, str]],
                       has_traceparent: bool, sp_num: str | None) -> dict[str, str]:
    """The headers to set on the request forwarded upstream (each replaces any existing one)."""
    traceparent = ctx.traceparent
    entries = [f"{SP_TRACEPARENT}={traceparent}"]
    present = {k: v for k, v in tracestate if k in TRACESTATE_SESSIONS}
    value = next((present[k] for k in TRACESTATE_SESSIONS if k in present), session)
    entries += [f"{k}={value}" for k in TRACESTATE_SESSIONS if k not in present]
    entries += [f"{k}={v}" for k, v in tracestate if k != SP_TRACEPARENT]
    headers = {"tracestate": ",".join(entries), "x-sp-num": str(_next_num(sp_num))}
    if not has_traceparent:
        headers["traceparent"] = traceparent
    return headers


def _next_num(value: str | None) -> int:
    try:
        return int((value or "").strip()) + 1
    except ValueError:
        return 0
