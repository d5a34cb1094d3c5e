"""The SQLite store: exchanges and sessions recorded, lookups answered, misses explained.

`Store` is the one object other code uses; it owns the connections and hands one to the module
doing the work: `ingest` (rows in, sessions, retention), `answering` (lookups), `misses`
(diagnosis and the misses table) and `browse` (listings). The file's tables are in `schema`,
how an older file is brought up to date in `migrations`.

Called from several threads at once (the standalone server's request threads ingest and read):
one writer connection behind a lock, a small pool of reader connections, WAL so readers never
wait for the writer. In the gateway the export worker process is the one writer; the proxy
opens the store read-only for its lookups and hands each miss to the worker (`on_miss`), which
diagnoses and writes it (`explain_misses`): a lookup never waits for a write. A lookup is an indexed
query on the request's fingerprint (see `matching`); which of several identical recorded
requests answers is the replay state (see `positions`), kept in memory.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.formats import spans
from softprobe_gateway.store import (
    answering,
    browse,
    ingest,
    matching,
    migrations,
    misses,
    schema,
)
from softprobe_gateway.store.db import StoreError, transaction
from softprobe_gateway.store.forms import Forms
from softprobe_gateway.store.model import (
    LookupRequest,
    Miss,
    MissedLookup,
    Recording,
    SessionPage,
    SessionSummary,
)
from softprobe_gateway.store.positions import Replays

MAX_IDLE_READERS = 8
_BUSY_TIMEOUT_MS = 5000

log = logging.getLogger(__name__)


class Store:
    """Sessions and exchanges in one SQLite file (WAL)."""

    def __init__(self, config: StoreConfig, *, read_only: bool = False,
                 on_miss: Callable[[MissedLookup], None] | None = None, autocheckpoint: bool = True) -> None:
        """`on_miss` takes the lookups nothing answered, to be explained by the writer. Without
        `autocheckpoint` a commit never copies the WAL into the file: the caller `checkpoint`s.
        Opened read-write, a file written by an earlier version is brought up to date."""
        self.config = config
        self._on_miss = on_miss
        self.path = Path(config.path)
        self.read_only = read_only
        self._forms = Forms(matching.Ignore.parse(config.ignore_fields))
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._replays = Replays(config.session_scope, config.sequence_reset_s)
        self._pending = misses.Pending()
        self._closed = False
        if read_only and not self.path.is_file():
            raise StoreError(f"store {self.path}: no such file (nothing recorded yet?)")
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"store {self.path}: cannot create its directory: {e.strerror}") from None
        with self._guard("cannot open"):
            self._writer = self._connect()
            migrations.check(self._writer, self.path)
            if not read_only:
                self._writer.execute("PRAGMA journal_mode=WAL")
                if not autocheckpoint:
                    self._writer.execute("PRAGMA wal_autocheckpoint=0")
                migrations.upgrade(self._writer, self.path)
                with self._write_lock, self._writing() as db:
                    ingest.refresh_fingerprints(db, self._forms)
                    ingest.apply_retention(db, config)
            self._writer.execute(f"SELECT {schema.SELECT} FROM exchanges LIMIT 1").fetchone()

    # -- connections --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        uri = f"{self.path.absolute().as_uri()}{'?mode=ro' if self.read_only else ''}"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """SQLite's errors as one-line StoreErrors naming the file."""
        try:
            yield
        except sqlite3.Error as e:
            hint = " (corrupt, or not an SQLite file)" if "not a database" in str(e) or "malformed" in str(e) else ""
            if "no such column" in str(e):
                hint = " (written by an older gateway: a gateway or `softprobe serve` upgrades it when it opens it)"
            raise StoreError(f"store {self.path}: {action}: {e}{hint}") from None

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._connect()
            db.execute("PRAGMA query_only=1")
        try:
            with self._guard("cannot read"):
                yield db
        finally:
            with self._pool_lock:
                keep = not self._closed and len(self._idle) < MAX_IDLE_READERS
                if keep:
                    self._idle.append(db)
            if not keep:
                db.close()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the caller holds `_write_lock`."""
        if self.read_only:
            raise StoreError(f"store {self.path}: opened read-only")
        with self._guard("cannot write"), transaction(self._writer) as db:
            yield db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the writer connection, for other tables' modules (`control`)."""
        with self._write_lock, self._writing() as db:
            yield db

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A pooled reader connection, for other tables' modules."""
        with self._reading() as db:
            yield db

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write the misses not yet written, and close every connection."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self.read_only:
                    with self._writing() as db:
                        self._pending.flush(db)
            finally:
                self._writer.close()
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (readers are never blocked by it)."""
        with self._write_lock, self._guard("cannot checkpoint"):
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- recording ----------------------------------------------------------------------

    def ingest(self, traces: TracesData) -> int:
        """Store every extract span as an exchange; returns how many were new (a span sent twice,
        e.g. by an export retry, is stored once)."""
        return self.add(spans.extract_exchanges(traces))

    def add(self, exchanges: Iterable[Recording]) -> int:
        rows = ingest.rows(exchanges, self._forms, time.time_ns())  # parsed before the writer is taken
        with self._write_lock, self._writing() as db:
            added = ingest.insert(db, rows)
            ingest.apply_retention(db, self.config)
            self._pending.flush(db)
        return added

    # -- lookups ------------------------------------------------------------------------

    def lookup(self, request: TracesData) -> TracesData | None:
        """Protocol section 2: the recorded answer to the request of the inject span, or None."""
        req = spans.lookup_request(request)
        return None if req is None else self.answer(req)

    def answer(self, req: LookupRequest) -> TracesData | None:
        """The recorded answer to `req` as a lookup hit, or None (`replay`)."""
        exchange = self.replay(req)
        return spans.answer(exchange) if exchange else None

    def replay(self, req: LookupRequest) -> Recording | None:
        """The recorded exchange answering `req`, or None after recording why nothing did."""
        form = self._forms.of_lookup(req)
        with self._reading() as db:
            exchange = answering.answer(db, self._replays, req.session_id, form)
            if exchange is None and self._on_miss is None:
                miss = misses.diagnose(db, req, form, self._forms, self.config.session_scope)
        if exchange is None:
            if self._on_miss is not None:
                self._on_miss(MissedLookup(time.time_ns(), req))
            else:
                self._record_miss(miss)
        return exchange

    # -- misses -------------------------------------------------------------------------

    def explain_misses(self, missed: Iterable[MissedLookup]) -> None:
        """Diagnose misses handed over by a read-only store (`on_miss`), and write them."""
        with self._reading() as db:
            self._pending.add([misses.diagnose(db, m.request, self._forms.of_lookup(m.request), self._forms,
                                               self.config.session_scope, m.at_ns) for m in missed])
        with self._write_lock, self._writing() as db:
            self._pending.flush(db)

    def _record_miss(self, miss: Miss) -> None:
        """Write now when the writer is free; otherwise the next write carries it, so a lookup
        never waits behind an ingest batch."""
        self._pending.add([miss])
        if self.read_only or not self._write_lock.acquire(blocking=False):
            return
        try:
            if not self._closed:
                with self._writing() as db:
                    self._pending.flush(db)
        except StoreError as e:  # a diagnostic must never turn a miss into a failed lookup
            log.warning("%s", e)
        finally:
            self._write_lock.release()

    def misses(self, limit: int = 50) -> list[Miss]:
        """The latest misses, newest first."""
        with self._reading() as db:
            return misses.latest(db, limit)

    # -- browsing -----------------------------------------------------------------------

    def sessions(self, size: int = 20, service: str = "", status: int = 0, start_from_ns: int = 0,
                 start_to_ns: int = 0, cursor: str = "") -> SessionPage:
        """Sessions, most recently active first, a page at a time (`cursor` from the last page;
        ValueError when it is not one)."""
        with self._reading() as db:
            return browse.sessions(db, size, service, status, start_from_ns, start_to_ns, cursor)

    def session(self, session_id: str, limit: int = 10_000) -> tuple[SessionSummary | None, list[Recording]]:
        """One session and its exchanges in recorded order (at most `limit`)."""
        with self._reading() as db:
            return browse.session(db, session_id, limit)

    def find(self, prefix: str, limit: int = 5) -> list[tuple[str, str]]:
        """What an id, or the start of one, names: ("session", id) and ("exchange", span id)
        pairs, at most `limit`; a session whose id is exactly `prefix` alone."""
        if not prefix:
            return []
        with self._reading() as db:
            return browse.find(db, prefix, limit)

    def count_stored(self, spans: Iterable[tuple[str, str]]) -> int:
        """How many of these (trace id, span id) are stored: what a dead export worker committed
        before it could report."""
        with self._reading() as db:
            return browse.count_stored(db, spans)

    def exchange(self, span_id: str) -> Recording | None:
        """The latest recorded exchange with this span id."""
        with self._reading() as db:
            return browse.exchange(db, span_id)
