"""A request's matching form under the store's ignored fields: what ingest fingerprints, a lookup
is queried by and a miss is diffed with (see `matching`)."""

from __future__ import annotations

from dataclasses import dataclass

from softprobe_gateway.store import matching
from softprobe_gateway.store.model import LookupRequest, Recording


@dataclass(frozen=True, slots=True)
class Forms:
    ignore: matching.Ignore

    def of(self, method: str, host: str, path: str, content_type: str, body: str) -> matching.RequestForm:
        return matching.parse_request(method, host, path, content_type, body, self.ignore)

    def of_lookup(self, req: LookupRequest) -> matching.RequestForm:
        return self.of(req.method, req.host, req.path, req.content_type, req.body)

    def of_exchange(self, ex: Recording) -> matching.RequestForm:
        return self.of(ex.method, ex.host, ex.path, ex.request_headers.get("content-type", ""),
                       ex.request_body)
