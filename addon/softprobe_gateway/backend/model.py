"""The backend's domain as plain data: a recorded exchange, a session summary, a recorded miss."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Exchange:
    """One recorded HTTP exchange, with bodies exactly as the span carried them (text or base64)."""

    session_id: str
    trace_id: str  # hex
    span_id: str  # hex
    parent_span_id: str  # hex, "" for a root
    service: str
    direction: str
    kind: str  # "server" or "client"
    method: str
    host: str
    path: str  # with query
    status: int
    error: bool
    start_ns: int
    end_ns: int
    request_headers: dict[str, str]  # lower-cased names, pseudo-headers included
    response_headers: dict[str, str]
    request_body: str
    response_body: str
    id: int = 0  # the store's row id, 0 before it is stored
    # "hit", "mock" or "refusal" when the gateway answered, not the upstream: shown, never replayed
    answered_by: str = ""
    error_message: str = ""  # why a failed exchange failed (the span's `error.message`)
    # A body cut at capture.max_body_bytes: its size on the wire (0: kept whole).
    request_original_size: int = 0
    response_original_size: int = 0

    @property
    def route(self) -> str:
        """The path without its query."""
        return self.path.split("?", 1)[0]

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True, slots=True)
class LookupRequest:
    """The request half of an inject span: what a lookup matches on."""

    session_id: str
    method: str
    host: str
    path: str  # with query
    content_type: str
    body: str


@dataclass(frozen=True, slots=True)
class MissedLookup:
    """A lookup nothing answered, as it was asked: diagnosed later, off the lookup path."""

    at_ns: int
    request: LookupRequest


@dataclass(frozen=True, slots=True)
class SessionSummary:
    id: str
    service: str
    first_ns: int
    last_ns: int
    exchanges: int
    errors: int


@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: list[SessionSummary]
    next_cursor: str  # "" on the last page


@dataclass(frozen=True, slots=True)
class Miss:
    """A lookup nothing answered, with the closest recorded exchange and why it differs."""

    at_ns: int
    session_id: str
    method: str
    host: str
    path: str
    closest: str  # "" when nothing was recorded for comparison
    diff: tuple[str, ...]
