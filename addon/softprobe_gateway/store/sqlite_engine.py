"""The SQLite engine: one file, the embedded default (`sqlite:PATH`, `--db PATH`, `store.path`).

Called from several threads at once (the standalone server's request threads ingest and read):
one writer connection behind a lock, a small pool of reader connections, WAL so readers never
wait for the writer. In the gateway the export worker process is the one writer; the proxy opens
the file read-only for its lookups, and writes only control-session counters, through a
connection of its own (`side_writing`). Replay positions are kept in this process's memory
(`positions`): one writer, one answerer. The file's schema is in `schema`, its migrations in
`migrations`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store import ingest, migrations, schema
from softprobe_gateway.store.db import Db, StoreError, transaction
from softprobe_gateway.store.forms import Forms
from softprobe_gateway.store.model import Recording
from softprobe_gateway.store.positions import CasePositions, Replays

MAX_IDLE_READERS = 8
_BUSY_TIMEOUT_MS = 5000
# A side write (a control session's counter, from a gateway's lookup) waits this long for the
# worker's write lock, then fails: well under the lookup's own timeout (lookup.timeout_ms).
_SIDE_BUSY_TIMEOUT_MS = 100


class SqliteEngine:
    kind = "sqlite"
    layout = schema.SQLITE

    def __init__(self, config: StoreConfig, forms: Forms, *, read_only: bool = False,
                 autocheckpoint: bool = True) -> None:
        """Opened read-write, a file written by an earlier version is brought up to date. Without
        `autocheckpoint` a commit never copies the WAL into the file: the caller `checkpoint`s."""
        self.config, self.path, self.read_only = config, Path(config.path), read_only
        self.name = str(self.path)
        self._write_lock, self._pool_lock, self._side_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._side: sqlite3.Connection | None = None
        self._replays = Replays(config.session_scope, config.sequence_reset_s)
        self._cases = CasePositions()
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
                with self.writing() as db:
                    ingest.refresh_fingerprints(db, forms)
                    self._apply_retention(db)
            self._writer.execute(f"SELECT {schema.SELECT} FROM exchanges LIMIT 1").fetchone()

    def _connect(self, busy_timeout_ms: int = _BUSY_TIMEOUT_MS, *, read_only: bool | None = None) -> sqlite3.Connection:
        read_only = self.read_only if read_only is None else read_only
        uri = f"{self.path.absolute().as_uri()}{'?mode=ro' if read_only else ''}"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync per commit
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

    def _db(self, conn: sqlite3.Connection) -> Db:
        return Db(conn, self.layout, self.kind)

    @contextmanager
    def reading(self) -> Iterator[Db]:
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
        try:
            with self._guard("cannot read"):
                yield self._db(conn)
        finally:
            with self._pool_lock:
                keep = not self._closed and len(self._idle) < MAX_IDLE_READERS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def _transaction(self) -> Iterator[Db]:
        """The caller holds `_write_lock`."""
        if self.read_only:
            raise StoreError(f"store {self.path}: opened read-only")
        with self._guard("cannot write"), transaction(self._writer) as conn:
            yield self._db(conn)

    @contextmanager
    def writing(self) -> Iterator[Db]:
        with self._write_lock:
            yield from self._transaction()

    @contextmanager
    def try_writing(self) -> Iterator[Db | None]:
        if self.read_only or not self._write_lock.acquire(blocking=False):
            yield None
            return
        try:
            if self._closed:
                yield None
            else:
                yield from self._transaction()
        finally:
            self._write_lock.release()

    @contextmanager
    def side_writing(self) -> Iterator[Db]:
        if not self.read_only:
            with self.writing() as db:
                yield db
            return
        with self._side_lock, self._guard("cannot write"):
            if self._side is None:
                self._side = self._connect(_SIDE_BUSY_TIMEOUT_MS, read_only=False)
                self._side.execute("PRAGMA wal_autocheckpoint=0")  # the worker checkpoints, not a lookup
            with transaction(self._side) as conn:
                yield self._db(conn)

    def insert(self, db: Db, rows: ingest.Rows) -> list[Recording]:
        """One INSERT per row, skipped when its span is stored; retention in the same transaction."""
        stored = [ex for ex, row in rows if db.execute(schema.INSERT, row).rowcount]
        db.executemany(
            "INSERT INTO sessions (id, service, first_ns, last_ns, exchanges, errors) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
            "first_ns = min(first_ns, excluded.first_ns), last_ns = max(last_ns, excluded.last_ns), "
            "exchanges = exchanges + excluded.exchanges, errors = errors + excluded.errors",
            ingest.session_counts(stored))
        self._apply_retention(db)
        return stored

    def retain(self, *, now: bool = False) -> None:
        """Retention runs in every insert's transaction already; `now` runs it on its own."""
        if now:
            with self.writing() as db:
                self._apply_retention(db)

    def _apply_retention(self, db: Db) -> None:
        """Delete the oldest exchanges beyond `max_exchanges`, and those older than `max_age_hours`
        (by when they were stored: span clocks are other machines'), then fix their sessions."""
        # Row ids are dense (AUTOINCREMENT, every insert kept, only the oldest ever deleted), so
        # this keeps the newest max_exchanges rows without counting them.
        touched = {r[0] for r in db.execute(
            "DELETE FROM exchanges WHERE id <= (SELECT max(id) FROM exchanges) - ? "
            "RETURNING session_id", (self.config.max_exchanges,))}
        if self.config.max_age_hours:
            cutoff = time.time_ns() - int(self.config.max_age_hours * 3600e9)
            touched |= {r[0] for r in db.execute(
                "DELETE FROM exchanges WHERE ingested_ns < ? RETURNING session_id", (cutoff,))}
        for session_id in touched:
            db.execute("DELETE FROM sessions WHERE id = ?1 AND NOT EXISTS "
                       "(SELECT 1 FROM exchanges WHERE session_id = ?1)", (session_id,))
            db.execute("UPDATE sessions SET (first_ns, last_ns, exchanges, errors) = "
                       "(SELECT min(start_ns), max(max(end_ns), max(start_ns)), count(*), sum(error) "
                       "FROM exchanges WHERE session_id = ?1) WHERE id = ?1", (session_id,))

    def replays(self, db: Db) -> Replays:
        return self._replays

    def case_position(self, session_id: str, revision: int, fingerprint: str) -> int:
        return self._cases.next(session_id, revision, fingerprint)

    def forget_case(self, session_id: str) -> None:
        self._cases.forget(session_id)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (readers are never blocked by it)."""
        with self._write_lock, self._guard("cannot checkpoint"):
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            self._writer.close()
        with self._side_lock:
            if self._side is not None:
                self._side.close()
                self._side = None
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
