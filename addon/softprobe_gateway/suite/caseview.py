"""A case file as a suite run reads it: its recorded exchanges (the formats' own reading of a case,
`casefile.case_exchanges`), `findInCase` over them with the control API's rule predicates
(`session_rules.matches`, so a suite's `match` means what a rule's `when` means on the runtime),
the recorded ingress request and response, and the raw OTLP span a MockResponseHook receives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprobe_gateway.decisions import session_rules
from softprobe_gateway.formats.casefile import CaseError, case_exchanges
from softprobe_gateway.store.model import Fields, Recording
from softprobe_gateway.suite.results import HttpMessage

# Not replayed to the app as request headers: they describe the recorded hop, not the request.
_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te",
                "upgrade", "proxy-connection", "traceparent", "tracestate", "x-sp-num"}


class CaseLookupError(ValueError):
    """`findInCase` found no span or more than one: the case fails, as Softprobe's CLI fails it."""


@dataclass(frozen=True)
class CaseFile:
    path: Path
    document: dict[str, Any]
    exchanges: list[Recording]

    @property
    def case_id(self) -> str:
        return str(self.document.get("caseId") or "")

    def find(self, match: dict[str, Any]) -> Recording:
        """The one recorded exchange `match` selects (Softprobe's `findInCase`)."""
        hits = [ex for ex in self.exchanges if session_rules.matches(match, _as_request(ex))]
        if len(hits) != 1:
            seen = "; ".join(_describe(ex) for ex in hits[:5])
            raise CaseLookupError(f"findInCase {json.dumps(match, sort_keys=True)}: "
                                  f"{len(hits)} spans match, exactly one expected" + (f" ({seen})" if seen else ""))
        return hits[0]

    def ingress(self) -> Recording | None:
        """The recorded inbound exchange (the request a `case.ingress` suite sends again)."""
        return next((ex for ex in self.exchanges if ex.direction in ("inbound", "server")), None)

    def span(self, exchange: Recording) -> dict[str, Any]:
        """The exchange's span as the case file holds it (OTLP JSON)."""
        for trace in self.document.get("traces") or []:
            for rs in trace.get("resourceSpans") or []:
                for ss in rs.get("scopeSpans") or []:
                    for span in ss.get("spans") or []:
                        if str(span.get("spanId", "")).lower() == exchange.span_id:
                            return span
        return {}


def read(path: Path) -> CaseFile:
    """Parse a case file; CaseError says why it is not one."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as e:
        raise CaseError(f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CaseError(f"{path}: not JSON: {e}") from None
    try:
        return CaseFile(path, document, case_exchanges(json.loads(json.dumps(document))))
    except CaseError as e:
        raise CaseError(f"{path}: {e}") from None


def response_of(ex: Recording) -> HttpMessage:
    """The recorded response: status, headers (pseudo-headers left out), body as recorded."""
    return HttpMessage(status=ex.status or 200, headers=headers_of(ex.response_headers), body=ex.response_body)


def request_of(ex: Recording) -> HttpMessage:
    """The recorded request as it is sent again: hop headers left out."""
    headers = {k: v for k, v in headers_of(ex.request_headers).items() if k not in _HOP_HEADERS}
    return HttpMessage(method=ex.method or "GET", url=ex.path or "/", headers=headers, body=ex.request_body)


def headers_of(fields: Fields) -> dict[str, str]:
    """One value per name (a repeated field's values joined by `, `), pseudo-headers left out."""
    names = dict.fromkeys(name for name, _ in fields if not name.startswith(":"))
    return {name: fields.get(name) or "" for name in names}


def _as_request(ex: Recording) -> session_rules.Request:
    headers: dict[str, list[str]] = {}
    for name, value in ex.request_headers:
        headers.setdefault(name, []).append(value)
    return session_rules.Request(method=ex.method, host=ex.host, path=ex.path, direction=ex.direction,
                                 service=ex.service, headers=headers, body=ex.request_body)


def _describe(ex: Recording) -> str:
    return f"{ex.direction} {ex.method} {ex.host}{ex.path} span {ex.span_id}"
