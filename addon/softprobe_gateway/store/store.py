"""The store: exchanges and sessions recorded, lookups answered, misses explained, on either engine.

`Store` is the one object other code uses, whatever the engine (`engine`: SQLite's file, the
default, or a PostgreSQL database several `softprobe serve` replicas share; `open_store` picks it
by URL). It takes a connection from the engine and hands it to the module doing the work:
`ingest` (rows in, sessions), `answering` (lookups), `misses` (diagnosis and the misses table)
and `browse` (listings). A lookup is an indexed query on the request's fingerprint (see
`matching`); which of several identical recorded requests answers is the replay state (see
`positions`), kept where the engine keeps it.

A read-only store (the gateway's proxy) hands each miss to the writer (`on_miss`), which
diagnoses and writes it (`explain_misses`): a lookup never waits for a write.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.formats import spans
from softprobe_gateway.store import answering, browse, ingest, matching, misses
from softprobe_gateway.store.db import Db, StoreError
from softprobe_gateway.store.engine import Engine
from softprobe_gateway.store.forms import Forms
from softprobe_gateway.store.model import (
    LookupRequest,
    Miss,
    MissedLookup,
    Recording,
    RunSummary,
    SessionPage,
    SessionSummary,
)
from softprobe_gateway.store.sqlite_engine import SqliteEngine

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
STORE_URL_ENV = "SOFTPROBE_STORE_URL"

log = logging.getLogger(__name__)

__all__ = ["Store", "StoreError", "describe", "open_store", "parse_url"]


def parse_url(url: str, config: StoreConfig = StoreConfig()) -> StoreConfig:
    """`config` pointed at the store a URL names: `sqlite:PATH` (or a bare path) or
    `postgresql://USER[:PASS]@HOST:PORT/DB`; ValueError for anything else."""
    if url.startswith(POSTGRES_SCHEMES):
        return dataclasses.replace(config, url=url)
    if url.startswith("sqlite:"):
        url = url.removeprefix("sqlite:").removeprefix("//")
    elif "://" in url:
        raise ValueError(f"expected sqlite:PATH or postgresql://USER@HOST:PORT/DB, got {url.split('://')[0]}://...")
    if not url:
        raise ValueError("sqlite: names no file")
    return dataclasses.replace(config, path=url, url="")


def describe(config: StoreConfig) -> str:
    """Where a store is, as messages name it: the file, or the database's URL without its
    password (nor a query, which may carry one)."""
    if not config.url:
        return config.path
    parts = urlsplit(config.url)
    user = f"{parts.username}@" if parts.username else ""
    address = parts.netloc.rpartition("@")[2]  # as written: an IPv6 host keeps its brackets, a bad port shows as it is
    return f"{parts.scheme}://{user}{address}{parts.path}"


def open_store(config_or_url: StoreConfig | str, **options) -> Store:
    """The store a config (its `url`, else its `path`) or a URL (see `parse_url`) names; what
    `softprobe serve` and the CLI call. StoreError (one line) when it cannot be opened."""
    if isinstance(config_or_url, str):
        try:
            config_or_url = parse_url(config_or_url)
        except ValueError as e:
            raise StoreError(f"store URL: {e}") from None
    return Store(config_or_url, **options)


class Store:
    """Sessions and exchanges in one engine's database."""

    def __init__(self, config: StoreConfig, *, read_only: bool = False,
                 on_miss: Callable[[MissedLookup], None] | None = None, autocheckpoint: bool = True) -> None:
        """`on_miss` takes the lookups nothing answered, to be explained by the writer. Opened
        read-write, a database written by an earlier version is brought up to date (SQLite:
        `autocheckpoint` off leaves copying the WAL to the caller's `checkpoint`)."""
        self.config, self.read_only = config, read_only
        self._on_miss = on_miss
        self._forms = Forms(matching.Ignore.parse(config.ignore_fields))
        self._pending = misses.Pending()
        self._sessions_seen: set[str] = set()  # sessions already stored into, for runs_of_nothing_held
        self._close_lock = threading.Lock()
        self._closed = False
        self.engine: Engine
        if config.url:
            from softprobe_gateway.store.postgres_engine import PostgresEngine  # psycopg only when used

            self.engine = PostgresEngine(config, self._forms, read_only=read_only)
        else:
            self.engine = SqliteEngine(config, self._forms, read_only=read_only, autocheckpoint=autocheckpoint)
        self.path = Path(config.path)  # the SQLite file (what the gateway's embedded backend names)
        self.name = self.engine.name  # the file, or the database URL without its password

    # -- connections --------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Db]:
        """One write transaction, for other tables' modules (`control`)."""
        with self.engine.writing() as db:
            yield db

    @contextmanager
    def reader(self) -> Iterator[Db]:
        """A connection to read with, for other tables' modules."""
        with self.engine.reading() as db:
            yield db

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write the misses not yet written, and close every connection."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            if not self.read_only:
                with self.engine.writing() as db:
                    self._pending.flush(db)
        finally:
            self.engine.close()

    def checkpoint(self) -> None:
        """SQLite: copy the WAL into the database file (readers are never blocked by it)."""
        self.engine.checkpoint()

    # -- recording ----------------------------------------------------------------------

    def ingest(self, traces: TracesData) -> int:
        """Store every extract span as an exchange; returns how many were new (a span sent twice,
        e.g. by an export retry, is stored once)."""
        return self.add(spans.extract_exchanges(traces))

    def add(self, exchanges: Iterable[Recording]) -> int:
        rows = ingest.rows(exchanges, self._forms, time.time_ns(), self.engine.layout)  # before the writer
        with self.engine.writing() as db:
            stored = self.engine.insert(db, rows)
            self._pending.flush(db)
            unheld = ingest.runs_of_nothing_held(db, {ex.session_id for ex in stored} - self._sessions_seen)
        self.engine.retain()
        self._say_runs_of_nothing_held(stored, unheld)
        return len(stored)

    def _say_runs_of_nothing_held(self, stored: list[Recording], unheld: list[tuple[str, str]]) -> None:
        """Once per session: a `~` in a session id names a replay run, so a service's own id with
        one is listed by `runs`, not `sessions`; said when its recording is not here to explain it."""
        if len(self._sessions_seen) > 10_000:  # bounded: a session said again after that is harmless
            self._sessions_seen.clear()
        self._sessions_seen.update(ex.session_id for ex in stored)
        for session, recorded in unheld:
            log.warning(f"softprobe: session {session[:256]!r} is kept as a replay run of {recorded[:256]!r} (a `~` in a "
                        f"session id names one, <recorded>~<run>), a session this store does not hold: "
                        "`softprobe runs` lists it, `softprobe sessions` leaves it out. A service's own "
                        "session ids must not contain `~`")

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
        with self.engine.reading() as db:
            exchange = answering.answer(db, self.engine.replays(db), req.session_id, form)
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
        with self.engine.reading() as db:
            self._pending.add([misses.diagnose(db, m.request, self._forms.of_lookup(m.request), self._forms,
                                               self.config.session_scope, m.at_ns) for m in missed])
        with self.engine.writing() as db:
            self._pending.flush(db)

    def _record_miss(self, miss: Miss) -> None:
        """Write now when the writer is free; otherwise the next write carries it, so a lookup
        never waits behind an ingest batch."""
        self._pending.add([miss])
        if self.read_only or self._closed:
            return
        try:
            with self.engine.try_writing() as db:
                if db is not None:
                    self._pending.flush(db)
        except StoreError as e:  # a diagnostic must never turn a miss into a failed lookup
            log.warning("%s", e)

    def misses(self, limit: int = 50) -> list[Miss]:
        """The latest misses, newest first."""
        with self.engine.reading() as db:
            return misses.latest(db, limit)

    # -- browsing -----------------------------------------------------------------------

    def sessions(self, size: int = 20, service: str = "", status: int = 0, start_from_ns: int = 0,
                 start_to_ns: int = 0, cursor: str = "", runs: bool | None = None) -> SessionPage:
        """Sessions, most recently active first, a page at a time (`cursor` from the last page;
        ValueError when it is not one); `runs` False: recordings only, True: replay runs only."""
        with self.engine.reading() as db:
            return browse.sessions(db, size, service, status, start_from_ns, start_to_ns, cursor, runs)

    def runs(self, recorded: str = "", size: int = 20) -> list[RunSummary]:
        """Replay runs (of the recorded session `recorded`, else all), most recently active first."""
        with self.engine.reading() as db:
            return browse.runs(db, recorded, size)

    def count_runs(self, service: str = "") -> int:
        """How many replay runs' sessions the store holds (of `service` only, unless it is "")."""
        with self.engine.reading() as db:
            return browse.count_runs(db, service)

    def session(self, session_id: str, limit: int = 10_000) -> tuple[SessionSummary | None, list[Recording]]:
        """One session and its exchanges in recorded order (at most `limit`)."""
        with self.engine.reading() as db:
            return browse.session(db, session_id, limit)

    def find(self, prefix: str, limit: int = 5) -> list[tuple[str, str]]:
        """What an id, or the start of one, names: ("session", id) and ("exchange", span id)
        pairs, at most `limit`; a session whose id is exactly `prefix` alone."""
        if not prefix:
            return []
        with self.engine.reading() as db:
            return browse.find(db, prefix, limit)

    def count_stored(self, spans: Iterable[tuple[str, str]]) -> int:
        """How many of these (trace id, span id) are stored: what a dead export worker committed
        before it could report."""
        with self.engine.reading() as db:
            return browse.count_stored(db, spans)

    def exchange(self, span_id: str) -> Recording | None:
        """The latest recorded exchange with this span id."""
        with self.engine.reading() as db:
            return browse.exchange(db, span_id)
