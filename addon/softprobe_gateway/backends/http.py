"""The Softprobe backend over HTTP: `POST /v1/traces` from the worker, `POST /v1/inject` from
the proxy (protocol sections 1 and 2)."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.backends.contract import (
    BAD_ANSWER,
    BAD_STATUS,
    CONNECT_ERROR,
    MAX_BACKOFF_S,
    LookupFailure,
    SendError,
    cause,
)
from softprobe_gateway.backends.httpclient import AnswerTooLarge, PostClient, ProtocolError
from softprobe_gateway.config.schema import Config
from softprobe_gateway.otlp import STRICT_MISS_HEADER, STRICT_MISS_STATUS, BadAnswer, Hit, decode_hit
from softprobe_gateway.store.model import MissedLookup
from softprobe_gateway.tls import client_context

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Answers above this are decoded on a thread rather than the event loop.
INLINE_DECODE_BYTES = 64 * 1024


class HttpBackend:
    def __init__(self, config: Config) -> None:
        self.config = config

    def describe(self) -> str:
        return self.config.sp_backend_url

    def sink(self) -> HttpSink:
        return HttpSink(self.config.sp_backend_url, self.config.public_key, self.config.export.timeout_s)

    def lookups(self, on_miss: Callable[[MissedLookup], None]) -> HttpLookups:
        return HttpLookups(self.config.sp_backend_url, self.config.public_key,
                           self.config.capture.max_body_bytes)

    def missing(self, spans: list[tuple[bytes, bytes]]) -> int:
        return len(spans)  # delivered or not, nothing tells: every unreported exchange counts


class HttpSink:
    """`POST {base}/v1/traces` as OTLP protobuf, with the public key header, over one keep-alive
    connection.

    The standard library's http.client rather than httpx: the worker's CPU is the gateway's, and
    per POST against the bench's backend httpx cost 0.23 ms of user time where http.client costs
    0.04, and with a 1 MiB batch 0.36 ms of system time where http.client's one sendall costs
    0.12 (measured). http.client reads no proxy settings from the environment, so the gateway's
    own export never loops through a proxy (itself).

    Two batches may be on their way at once, each on its own connection: on a busy machine the
    backend's answer can take longer than encoding the next batch.
    """

    concurrency = 2

    def __init__(self, base_url: str, public_key: str, timeout_s: float) -> None:
        self.url = base_url.rstrip("/") + "/v1/traces"
        parts = urlsplit(self.url)
        self.path = parts.path
        self.headers = {"content-type": "application/x-protobuf"}
        if public_key:  # both: Softprobe's runtime reads the bearer token, its backends the header
            self.headers["x-public-key"] = public_key
            self.headers["authorization"] = f"Bearer {public_key}"
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "https":
            self._new = lambda: http.client.HTTPSConnection(host, port, timeout=timeout_s, context=client_context())
        else:
            self._new = lambda: http.client.HTTPConnection(host, port, timeout=timeout_s)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def send(self, batch: TracesData) -> int:
        payload = batch.SerializeToString()
        return self.send_pieces([payload], len(payload))

    def send_pieces(self, pieces: list[bytes | bytearray | memoryview], size: int) -> int:
        """Send a serialized request given as pieces (`worker.wire`: its large bodies never
        copied into one buffer), written one after the other."""
        try:
            status, retry_after = self._post(pieces, size)
        except (OSError, http.client.HTTPException) as e:
            raise SendError(f"{cause(e)} posting to {self.url}", retry_after=0.0) from None
        if 200 <= status < 300:
            return size
        raise SendError(f"{self.url} answered {status}",
                        retry_after=_retry_after(retry_after) if status in RETRY_STATUSES else None)

    def _post(self, pieces: list[bytes | bytearray | memoryview], size: int) -> tuple[int, str]:
        """(status, retry-after) of one POST on an idle connection, or a new one; a kept-alive
        connection the server closed while idle is replaced once."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        reused = connection is not None
        while True:
            connection = connection or self._new()
            try:
                connection.request("POST", self.path, body=pieces,
                                   headers={**self.headers, "content-length": str(size)})
                response = connection.getresponse()
                response.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                connection.close()
                if not reused:
                    raise
                connection, reused = None, False
                continue
            except BaseException:
                connection.close()
                raise
            if response.will_close:
                connection.close()
            else:
                with self._lock:
                    self._idle.append(connection)
            return response.status, response.getheader("retry-after", "")

    def close(self) -> None:
        with self._lock:
            for connection in self._idle:
                connection.close()
            self._idle.clear()

    def settle(self) -> None:
        pass

    def explain_misses(self, missed: list[MissedLookup]) -> None:
        pass  # the backend diagnoses its own misses


def _retry_after(value: str) -> float:
    try:
        return min(float(value), MAX_BACKOFF_S)
    except ValueError:
        pass
    try:
        return min(max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0), MAX_BACKOFF_S)
    except (TypeError, ValueError):
        return 0.0


class HttpLookups:
    """`POST {base}/v1/inject` over one shared keep-alive client (no proxy from the env).

    An answer larger than a hit within `max_body` can be (base64 and attributes included) is
    refused without being read, so a huge answer is never buffered whole.
    """

    def __init__(self, base_url: str, public_key: str, max_body: int) -> None:
        self.url = base_url.rstrip("/") + "/v1/inject"
        self.limit, self.max_body = 2 * max_body + 64 * 1024, max_body
        headers = {"content-type": "application/x-protobuf", "accept-encoding": "identity"}
        if public_key:
            headers["x-public-key"] = public_key
            headers["authorization"] = f"Bearer {public_key}"
        self.client = PostClient(self.url, headers)

    async def ask(self, request: TracesData) -> Hit | None:
        url = self.url
        try:
            status, payload, headers = await self.client.post_answer(request.SerializeToString(), self.limit)
        except OSError as e:  # the cause in the log line: refused, reset, certificate not trusted...
            raise LookupFailure(CONNECT_ERROR, f"{url}: {type(e).__name__}: {e}") from None
        except (ProtocolError, AnswerTooLarge) as e:
            raise LookupFailure(BAD_ANSWER, f"{url}: {e}") from None
        if status == 404:
            return None
        if status == STRICT_MISS_STATUS and headers.get(STRICT_MISS_HEADER.encode()) == [b"1"]:
            return _strict_miss(payload, headers)
        if status != 200:
            raise LookupFailure(BAD_STATUS, f"{url} answered {status}")
        if not payload:
            raise LookupFailure(BAD_ANSWER, f"{url} answered 200 with an empty body")
        try:
            if len(payload) > INLINE_DECODE_BYTES:
                return await asyncio.to_thread(decode_hit, payload, self.max_body)
            return decode_hit(payload, self.max_body)
        except BadAnswer as e:
            raise LookupFailure(BAD_ANSWER, f"{url}: {e}") from None

    async def aclose(self) -> None:
        await self.client.aclose()


def _strict_miss(payload: bytes, headers: dict[bytes, list[bytes]]) -> Hit:
    """A strict miss, answered to the client as the runtime sent it: the upstream is never asked."""
    content_type = (headers.get(b"content-type") or [b"text/plain; charset=utf-8"])[0]
    return Hit(STRICT_MISS_STATUS, [("content-type", content_type.decode("latin-1")), (STRICT_MISS_HEADER, "1")],
               payload, refusal=True)
