"""`POST /v1/inject` under a control-API session: its rules first (`decisions.session_rules`),
then its loaded case's recorded answers, then the store's recordings of the session; what none
answers is forwarded, or refused as a strict miss when the session's policy says so. `lookup` is
the one answer `softprobe serve` and the embedded backend (a gateway on the store file) both give.

A strict miss is answered `599` with `x-softprobe-strict-miss: 1`, as Softprobe's runtime does: the
gateway hands it to the client, never to the upstream. A rule's `latencyMs` travels in the hit as
`sp.answer.delay_ms`, for the gateway to wait before answering (the lookup itself stays fast,
within the gateway's lookup timeout).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from opentelemetry.proto.trace.v1.trace_pb2 import Span, TracesData

from softprobe_gateway.decisions import session_rules
from softprobe_gateway.formats import casefile, spans
from softprobe_gateway.otlp import (
    DELAY_ATTRIBUTE,
    RESPONSE_HEADER,
    STRICT_MISS_HEADER,
    STRICT_MISS_STATUS,
    add_scope_spans,
    field_attributes,
    fill_span,
)
from softprobe_gateway.store import matching
from softprobe_gateway.store.control import ControlSession, Sessions
from softprobe_gateway.store.forms import Forms
from softprobe_gateway.store.model import LookupRequest, Recording
from softprobe_gateway.store.store import Store


@dataclass(frozen=True, slots=True)
class Answer:
    """What `/v1/inject` sends: a hit (`traces`), a miss (404, forwarded) or a strict miss."""

    traces: TracesData | None = None
    strict_miss: str = ""  # the refusal's message

    def refusal(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """A strict miss as the client gets it: status, headers and body."""
        return (STRICT_MISS_STATUS, [("content-type", "application/json"), (STRICT_MISS_HEADER, "1")],
                json.dumps({"error": self.strict_miss}).encode())


class SessionAnswers:
    """Answers lookups whose `sp.session.id` names an open control session."""

    def __init__(self, store: Store, sessions: Sessions) -> None:
        self.store, self.sessions = store, sessions
        self.forms = Forms(matching.Ignore.parse(store.config.ignore_fields))
        self._lock = threading.Lock()
        self._sessions: dict[str, ControlSession] = {}  # id -> its documents, parsed, at one revision
        self._cases: dict[str, tuple[int, dict[str, list[Recording]]]] = {}  # id -> (revision, by fingerprint)

    def lookup(self, traces: TracesData) -> Answer:
        """A lookup's answer, the one `softprobe serve`'s `/v1/inject` and the embedded backend both
        give: under an open control session the session's, else the store's recording. The inject
        span's attributes are decoded once, for both."""
        attrs = spans.inject_attributes(traces)
        if attrs is None:
            return Answer()
        session_id = str(attrs.get("sp.session.id", ""))
        if session := self._session(session_id):
            return self._answer(session, attrs)
        if session_id in self._sessions:  # closed through another process (the embedded backend's case)
            self.forget(session_id)
        return Answer(self.store.answer(spans.request_of(attrs)))

    def _answer(self, session: ControlSession, attrs: spans.Attrs) -> Answer:
        """The open session's answer: its rules, its case, its recordings, then its policy."""
        req = spans.request_of(attrs)
        headers: dict[str, list[str]] = {}
        for name, value in spans.request_headers(attrs):
            headers.setdefault(name, []).append(value)
        view = session_rules.Request(
            req.method, req.host, req.path, str(attrs.get("sp.traffic.direction", "")),
            str(attrs.get("sp.service.name", "")), headers, req.body,
            {k: v for k, v in attrs.items() if isinstance(v, str) and not k.startswith("http.request.")})
        decision = session_rules.decide(view, session.rule_list, session.case_rules)
        if decision is not None and decision.answers:
            self.sessions.count(session.id, "injected")
            return Answer(_rule_hit(decision, req))
        if decision is not None and decision.action in ("passthrough", "capture_only") or session.mode == "capture":
            return Answer()
        exchange = self._from_case(session, req) or self.store.replay(req)
        if exchange is not None:
            self.sessions.count(session.id, "injected")
            return Answer(spans.answer(exchange))
        if session_rules.strict_miss(view, session.policy):
            self.sessions.count(session.id, "strict_misses")
            return Answer(strict_miss=f"softprobe strict miss: no rule, case or recording of session "
                                     f"{session.id} answers {req.method} {req.host}{req.path}")
        return Answer()

    def _session(self, session_id: str) -> ControlSession | None:
        """The open session's documents (rules, case, policy): decoded again only when its revision
        changed, not on every lookup (a loaded case can be megabytes of JSON, decoded holding the
        GIL). Its counters in there are not kept current: lookups only add to them."""
        if (revision := self.sessions.revision(session_id)) is None:
            return None
        with self._lock:
            cached = self._sessions.get(session_id)
        if cached is None or cached.revision != revision:
            if (cached := self.sessions.get(session_id)) is None:
                return None
            with self._lock:
                self._sessions[session_id] = cached
        return cached

    def _from_case(self, session: ControlSession, req: LookupRequest) -> Recording | None:
        """The loaded case's next recorded answer to this request (the last one repeats)."""
        if not session.case:
            return None
        with self._lock:
            cached = self._cases.get(session.id)
            if cached is None or cached[0] != session.revision:
                cached = (session.revision, self._index(session.case))
                self._cases[session.id] = cached
        form = self.forms.of_lookup(req)
        for fingerprint in (form.fingerprint(), form.without_body().fingerprint()):
            if answers := cached[1].get(fingerprint):  # a new revision replays from the start
                n = self.store.engine.case_position(session.id, session.revision, fingerprint)
                return answers[min(n, len(answers) - 1)]
        return None

    def _index(self, case: dict) -> dict[str, list[Recording]]:
        by_fingerprint: dict[str, list[Recording]] = {}
        for ex in sorted(casefile.case_exchanges(case), key=lambda e: e.start_ns):
            by_fingerprint.setdefault(self.forms.of_exchange(ex).fingerprint(), []).append(ex)
        return by_fingerprint

    def forget(self, session_id: str) -> None:
        """Drop a closed session's cached case and replay positions."""
        with self._lock:
            self._sessions.pop(session_id, None)
            self._cases.pop(session_id, None)
        self.store.engine.forget_case(session_id)


def _rule_hit(decision: session_rules.Decision, req: LookupRequest) -> TracesData:
    """A mock or error rule's answer as a lookup hit span."""
    attrs: list = [("sp.span.type", "extract"), ("sp.session.id", req.session_id),
                   ("sp.rule.id", decision.rule_id), ("http.response.status_code", decision.status),
                   *field_attributes(RESPONSE_HEADER, decision.headers),
                   ("http.response.body", decision.body)]
    if decision.latency_ms > 0:
        attrs.append((DELAY_ATTRIBUTE, decision.latency_ms))
    data = TracesData()
    fill_span(add_scope_spans(data, "softprobe-runtime", "").spans.add(), req.path.split("?", 1)[0],
              b"\1" * 16, b"\1" * 8, b"", Span.SPAN_KIND_CLIENT, 0, 0, attrs, error=False)
    return data
