"""The embedded backend: the SQLite store. The worker is its one writer (exports, and the
misses the proxy hands over); the proxy reads it, for lookups on a thread, and writes only the
counters of the control sessions it answers under (`store.control`).

A lookup is answered as `softprobe serve`'s `/v1/inject` answers it (`SessionAnswers.lookup`, the
same function): under an open control session (created through a `serve` on the same file, or
the CLI) by the session's rules, case and policy, a strict miss included; else by the recordings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.backends.contract import BAD_ANSWER, LookupFailure, SendError
from softprobe_gateway.config.schema import Config, ConfigError
from softprobe_gateway.otlp import BadAnswer, Hit, hit_from_traces
from softprobe_gateway.store.control import Sessions
from softprobe_gateway.store.model import MissedLookup
from softprobe_gateway.store.session_answers import SessionAnswers
from softprobe_gateway.store.store import Store, StoreError

log = logging.getLogger(__name__)


class EmbeddedBackend:
    def __init__(self, config: Config) -> None:
        self.config = config

    def describe(self) -> str:
        return f"embedded store {self.config.local_path}"

    def sink(self) -> StoreSink:
        return StoreSink(open_store(self.config))

    def lookups(self, on_miss: Callable[[MissedLookup], None]) -> StoreLookups:
        # Lookups only read; their misses are diagnosed and written by the worker.
        return StoreLookups(open_store(self.config, read_only=True, on_miss=on_miss),
                            self.config.capture.max_body_bytes)

    def missing(self, spans: list[tuple[bytes, bytes]]) -> int:
        """The store is asked: the worker may have delivered a batch and died before its report
        (its rows are keyed by span id, a batch is one transaction, and the worker can commit
        nothing more)."""
        if not spans:
            return 0
        try:
            with open_store(self.config, read_only=True) as store:
                return len(spans) - store.count_stored((t.hex(), s.hex()) for t, s in spans)
        except (ConfigError, StoreError) as e:
            log.warning(f"softprobe: the store could not say what the dead export worker stored "
                        f"(all {len(spans)} counted lost): {e}")
            return len(spans)


class StoreSink:
    """The embedded backend: batches go straight into the SQLite store, whose one writer this
    is (the proxy process only reads it, and hands its misses over to be written here).

    A commit only appends to the WAL; copying it into the file (`settle`, after the batch was
    reported) takes longer, and a worker killed during it must not have its batch counted lost.
    """

    CHECKPOINT_BYTES = 4 * 1024 * 1024  # about SQLite's own default (1000 pages)
    concurrency = 1  # the store's one writer

    def __init__(self, store: Store) -> None:
        self.store, self.sessions = store, Sessions(store)
        self._unsettled = 0

    def send(self, batch: TracesData) -> int:
        try:
            self.sessions.ingest(batch)  # counted under control sessions too, as `serve` counts them
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


class StoreLookups:
    """The store's lookup, run on a thread: SQLite must not block the event loop."""

    def __init__(self, store: Store, max_body: int) -> None:
        self.store, self.max_body = store, max_body
        self.sessions = Sessions(store)
        self.answers = SessionAnswers(store, self.sessions)

    async def ask(self, request: TracesData) -> Hit | None:
        answer = await asyncio.to_thread(self.answers.lookup, request)
        if answer.strict_miss:  # a control session's strict policy: the upstream is never asked
            status, headers, body = answer.refusal()
            return Hit(status, headers, body, refusal=True)
        if answer.traces is None:
            return None
        try:
            return hit_from_traces(answer.traces, self.max_body)
        except BadAnswer as e:
            raise LookupFailure(BAD_ANSWER, f"embedded store: {e}") from None

    async def aclose(self) -> None:
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
