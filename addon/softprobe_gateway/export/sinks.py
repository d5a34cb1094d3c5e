"""Where export batches go: the Softprobe backend over HTTP, a JSON-lines file, or the embedded
store. A sink's `send` blocks (it runs in the worker process) and raises SendError."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from google.protobuf.json_format import MessageToJson
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from ..backend.model import MissedLookup
from ..backend.store import Store, StoreError
from ..config import Config, ConfigError
from ..tls import client_context

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 30.0


class SendError(Exception):
    """A batch was not accepted. `retry_after` is set when trying again may succeed."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Sink(Protocol):
    concurrency: int  # batches `send` may be called with at once, from as many threads

    def send(self, batch: TracesData) -> int:
        """Deliver the batch; the bytes delivered."""

    def close(self) -> None: ...


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
        if public_key:
            self.headers["x-public-key"] = public_key
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "https":
            self._new = lambda: http.client.HTTPSConnection(host, port, timeout=timeout_s, context=client_context())
        else:
            self._new = lambda: http.client.HTTPConnection(host, port, timeout=timeout_s)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def send(self, batch: TracesData) -> int:
        payload = batch.SerializeToString()
        try:
            status, retry_after = self._post(payload)
        except (OSError, http.client.HTTPException) as e:
            raise SendError(f"{cause(e)} posting to {self.url}", retry_after=0.0) from None
        if 200 <= status < 300:
            return len(payload)
        raise SendError(f"{self.url} answered {status}",
                        retry_after=_retry_after(retry_after) if status in RETRY_STATUSES else None)

    def _post(self, payload: bytes) -> tuple[int, str]:
        """(status, retry-after) of one POST on an idle connection, or a new one; a kept-alive
        connection the server closed while idle is replaced once."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        reused = connection is not None
        while True:
            connection = connection or self._new()
            try:
                connection.request("POST", self.path, body=payload, headers=self.headers)
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


def cause(e: BaseException) -> str:
    """`SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] ...`, not a bare class name."""
    detail = str(e) or str(e.__cause__ or e.__context__ or "")
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


def _retry_after(value: str) -> float:
    try:
        return min(float(value), MAX_BACKOFF_S)
    except ValueError:
        pass
    try:
        return min(max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0), MAX_BACKOFF_S)
    except (TypeError, ValueError):
        return 0.0


class FileSink:
    """Appends each batch as one line of OTLP JSON: useful with no backend at all."""

    concurrency = 1

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a", encoding="utf-8")

    def send(self, batch: TracesData) -> int:
        line = MessageToJson(batch, indent=None) + "\n"
        try:
            self.file.write(line)
            self.file.flush()
        except OSError as e:
            raise SendError(f"cannot write {self.path}: {e.strerror}") from None
        return len(line)

    def close(self) -> None:
        self.file.close()


class StoreSink:
    """The embedded backend: batches go straight into the SQLite store, whose one writer this
    is (the proxy process only reads it, and hands its misses over to be written here).

    A commit only appends to the WAL; copying it into the file (`settle`, after the batch was
    reported) takes longer, and a worker killed during it must not have its batch counted lost.
    """

    CHECKPOINT_BYTES = 4 * 1024 * 1024  # about SQLite's own default (1000 pages)
    concurrency = 1  # the store's one writer

    def __init__(self, store: Store) -> None:
        self.store = store
        self._unsettled = 0

    def send(self, batch: TracesData) -> int:
        try:
            self.store.ingest(batch)
        except StoreError as e:
            raise SendError(str(e)) from None
        size = batch.ByteSize()
        self._unsettled += size
        return size

    def settle(self) -> None:
        if self._unsettled >= self.CHECKPOINT_BYTES:
            self._unsettled = 0
            self.store.checkpoint()

    def explain_misses(self, missed: list[MissedLookup]) -> None:
        self.store.explain_misses(missed)

    def close(self) -> None:
        self.store.close()


def open_store(config: Config, *, read_only: bool = False,
               on_miss: Callable[[MissedLookup], None] | None = None) -> Store:
    """The embedded store at `store.path`: read-write in the worker (its one writer), read-only
    for the proxy's lookups. ConfigError naming the key when it cannot be opened."""
    try:
        return Store(config.store_config, read_only=read_only, on_miss=on_miss,
                     autocheckpoint=read_only)  # the writer checkpoints when it settles
    except StoreError as e:
        raise ConfigError(f"key 'store.path': {e}") from None


def open_sink(config: Config) -> Sink:
    """The sink for `sp_backend_url`; ConfigError when it cannot be opened."""
    kind = config.backend_kind
    if kind == "http":
        return HttpSink(config.sp_backend_url, config.public_key, config.export.timeout_s)
    if kind == "file":
        try:
            return FileSink(config.local_path)
        except OSError as e:
            raise ConfigError(f"key 'sp_backend_url': cannot open {config.local_path}: {e.strerror}") from None
    return StoreSink(open_store(config))
