"""The backend's domain as plain data: a recorded exchange, a session summary, a recorded miss."""

from __future__ import annotations

import json
from dataclasses import dataclass


class Fields(tuple):
    """Header (or trailer) fields as recorded: (lower-cased name, value) pairs in their order, a
    repeated field's values apart, as they are replayed. `get` joins a repeated field's values
    by `, ` (RFC 9110, section 5.3), which is what a reader of one value wants."""

    __slots__ = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        values = [value for key, value in self if key == name]
        return ", ".join(values) if values else default

    def to_json(self) -> str:
        return json.dumps(self, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Fields:
        """A stored list of pairs; a store written before repeats were kept holds an object."""
        value = json.loads(text) if text else []
        return cls(tuple(pair) for pair in (value.items() if isinstance(value, dict) else value))


@dataclass(frozen=True, slots=True)
class Recording:
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
    request_headers: Fields  # pseudo-headers included
    response_headers: Fields
    request_body: str
    response_body: str
    id: int = 0  # the store's row id, 0 before it is stored
    # who answered when the gateway did, not the upstream (softprobe_gateway.answered_by's HIT,
    # MOCK, REFUSAL, ADDON): shown, never replayed
    answered_by: str = ""
    error_message: str = ""  # why a failed exchange failed (the span's `error.message`)
    # A body cut at capture.max_body_bytes: its size on the wire (0: kept whole).
    request_original_size: int = 0
    response_original_size: int = 0
    response_trailers: Fields = Fields()  # fields after the body (HTTP/2: gRPC's grpc-status)

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
    closest: str  # "METHOD HOST/PATH in session S", "" when nothing was recorded for comparison
    diff: tuple[str, ...]
    closest_exchange: str = ""  # the closest exchange's id (its span id, as `softprobe show` takes it)


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A replay run's session (`<recorded>~<run>`) and what the gateway did for it: answered from
    the recording (hits, mocks), refused (strict replay had no answer), missed (lookups nothing
    answered, as the misses table still holds them), and errors (5xx or failed exchanges)."""

    id: str
    recorded: str
    service: str
    first_ns: int
    last_ns: int
    exchanges: int
    errors: int
    answered: int
    refused: int
    misses: int

    @property
    def passed(self) -> bool:
        """Every lookup of the run answered from the recording and nothing failed."""
        return not (self.errors or self.refused or self.misses)
