"""The SQLite store: exchanges and sessions recorded, lookups answered, misses explained.

Called from several threads at once (the standalone server's request threads ingest and read):
one writer connection behind a lock, a small pool of reader connections, WAL so readers never
wait for the writer. In the gateway the export worker process is the one writer; the proxy
opens the store read-only for its lookups and hands each miss to the worker (`on_miss`), which
diagnoses and writes it (`explain_misses`): a lookup never waits for a write. A lookup is an indexed
query on the request's fingerprint (see `matching`); which of several identical recorded
requests answers is the replay state (see `replay`), kept in memory.

An exchange the gateway answered itself (`answered_by`: a lookup hit, a mock, a strict replay's
refusal) is stored and shown like any other, but it is no recording: it never answers a lookup
and is never the closest recording of a miss.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.decisions.tracecontext import own_sessions
from softprobe_gateway.formats import spans
from softprobe_gateway.store import matching
from softprobe_gateway.store.model import (
    Exchange,
    Fields,
    LookupRequest,
    Miss,
    MissedLookup,
    SessionPage,
    SessionSummary,
)
from softprobe_gateway.store.positions import Replays

SCHEMA_VERSION = 1
MAX_MISSES = 1000  # kept in the file, newest first
MAX_PAGE = 100  # sessions per page of a listing
MAX_IDLE_READERS = 8
MAX_CANDIDATES = 20  # recorded requests compared with a miss
_BUSY_TIMEOUT_MS = 5000

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL, trace_id TEXT NOT NULL, span_id TEXT NOT NULL,
    parent_span_id TEXT NOT NULL, service TEXT NOT NULL, direction TEXT NOT NULL,
    kind TEXT NOT NULL, method TEXT NOT NULL, host TEXT NOT NULL, path TEXT NOT NULL,
    route TEXT NOT NULL, status INTEGER NOT NULL, error INTEGER NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, ingested_ns INTEGER NOT NULL,
    request_headers TEXT NOT NULL, response_headers TEXT NOT NULL,
    request_body TEXT NOT NULL, response_body TEXT NOT NULL, fingerprint TEXT NOT NULL,
    answered_by TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS exchanges_span ON exchanges (trace_id, span_id);
CREATE INDEX IF NOT EXISTS exchanges_replay ON exchanges (fingerprint, session_id, start_ns, id);
CREATE INDEX IF NOT EXISTS exchanges_request ON exchanges (method, host, route);
CREATE INDEX IF NOT EXISTS exchanges_session ON exchanges (session_id, start_ns);
CREATE INDEX IF NOT EXISTS exchanges_age ON exchanges (ingested_ns);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL, exchanges INTEGER NOT NULL, errors INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_recent ON sessions (last_ns, id);
CREATE TABLE IF NOT EXISTS misses (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_ns INTEGER NOT NULL, session_id TEXT NOT NULL,
    method TEXT NOT NULL, host TEXT NOT NULL, path TEXT NOT NULL, closest TEXT NOT NULL,
    diff TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Columns added since a store file was first created: (table, column, definition).
_ADDED_COLUMNS = (("exchanges", "answered_by", "TEXT NOT NULL DEFAULT ''"),
                  ("exchanges", "error_message", "TEXT NOT NULL DEFAULT ''"),
                  ("exchanges", "request_original_size", "INTEGER NOT NULL DEFAULT 0"),
                  ("exchanges", "response_original_size", "INTEGER NOT NULL DEFAULT 0"),
                  ("exchanges", "response_trailers", "TEXT NOT NULL DEFAULT '[]'"))
# Only recordings answer lookups and explain misses, never what the gateway answered itself.
RECORDED = "answered_by = ''"
_EXCHANGE_COLUMNS = ("session_id, trace_id, span_id, parent_span_id, service, direction, kind, method, "
                     "host, path, status, error, start_ns, end_ns, request_headers, response_headers, "
                     "request_body, response_body, id, answered_by, error_message, request_original_size, "
                     "response_original_size, response_trailers")


class StoreError(Exception):
    """The store cannot be used; the message is one line naming the file."""


class Store:
    """Sessions and exchanges in one SQLite file (WAL)."""

    def __init__(self, config: StoreConfig, *, read_only: bool = False,
                 on_miss: Callable[[MissedLookup], None] | None = None, autocheckpoint: bool = True) -> None:
        """`on_miss` takes the lookups nothing answered, to be explained by the writer. Without
        `autocheckpoint` a commit never copies the WAL into the file: the caller `checkpoint`s."""
        self.config = config
        self._on_miss = on_miss
        self.path = Path(config.path)
        self.read_only = read_only
        self._ignore = matching.Ignore.parse(config.ignore_fields)
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._miss_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._replays = Replays(config.session_scope, config.sequence_reset_s)
        self._pending_misses: list[Miss] = []
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
            if not read_only:
                self._writer.execute("PRAGMA journal_mode=WAL")
                if not autocheckpoint:
                    self._writer.execute("PRAGMA wal_autocheckpoint=0")
                self._writer.executescript(_SCHEMA)
                self._add_columns()
                self._writer.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._refresh_fingerprints()
                with self._write_lock, self._writing() as db:
                    self._apply_retention(db)
            self._writer.execute(f"SELECT {_EXCHANGE_COLUMNS} FROM exchanges LIMIT 1").fetchone()

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
        with self._guard("cannot write"):
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

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
                        self._flush_misses(db)
            finally:
                self._writer.close()
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()

    # -- recording ----------------------------------------------------------------------

    def ingest(self, traces: TracesData) -> int:
        """Store every extract span as an exchange; returns how many were new (a span sent twice,
        e.g. by an export retry, is stored once)."""
        return self.add(spans.extract_exchanges(traces))

    def add(self, exchanges: Iterable[Exchange]) -> int:
        now = time.time_ns()
        rows = [self._row(ex, now) for ex in exchanges]
        with self._write_lock, self._writing() as db:
            stored: dict[str, list[Exchange]] = {}
            for ex, row in rows:
                # Not INSERT OR IGNORE: an ignored row would still use up a row id (see retention).
                cursor = db.execute(
                    "INSERT INTO exchanges (session_id, trace_id, span_id, parent_span_id, "
                    "service, direction, kind, method, host, path, route, status, error, start_ns, "
                    "end_ns, ingested_ns, request_headers, response_headers, request_body, "
                    "response_body, fingerprint, answered_by, error_message, request_original_size, "
                    "response_original_size, response_trailers) SELECT ?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,"
                    "?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25,?26 WHERE NOT EXISTS (SELECT 1 FROM exchanges "
                    "WHERE trace_id = ?2 AND span_id = ?3)", row)
                if cursor.rowcount:
                    stored.setdefault(ex.session_id, []).append(ex)
            for session_id, added in stored.items():
                db.execute(
                    "INSERT INTO sessions (id, service, first_ns, last_ns, exchanges, errors) "
                    "VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
                    "first_ns = min(first_ns, excluded.first_ns), last_ns = max(last_ns, excluded.last_ns), "
                    "exchanges = exchanges + excluded.exchanges, errors = errors + excluded.errors",
                    (session_id, added[0].service, min(ex.start_ns for ex in added),
                     max(ex.end_ns or ex.start_ns for ex in added), len(added),
                     sum(ex.error for ex in added)))
            self._apply_retention(db)
            self._flush_misses(db)
        return sum(map(len, stored.values()))

    def _row(self, ex: Exchange, now: int) -> tuple[Exchange, tuple]:
        form = self._exchange_form(ex)
        return ex, (ex.session_id, ex.trace_id, ex.span_id, ex.parent_span_id, ex.service,
                    ex.direction, ex.kind, ex.method, ex.host, ex.path, ex.route, ex.status,
                    int(ex.error), ex.start_ns, ex.end_ns, now, ex.request_headers.to_json(),
                    ex.response_headers.to_json(), ex.request_body, ex.response_body,
                    form.fingerprint(), ex.answered_by, ex.error_message, ex.request_original_size,
                    ex.response_original_size, ex.response_trailers.to_json())

    def _form(self, method: str, host: str, path: str, content_type: str, body: str) -> matching.RequestForm:
        return matching.parse_request(method, host, path, content_type, body, self._ignore)

    def _lookup_form(self, req: LookupRequest) -> matching.RequestForm:
        return self._form(req.method, req.host, req.path, req.content_type, req.body)

    def _exchange_form(self, ex: Exchange) -> matching.RequestForm:
        return self._form(ex.method, ex.host, ex.path, ex.request_headers.get("content-type", ""),
                          ex.request_body)

    def _add_columns(self) -> None:
        """Bring a store file created by an earlier version up to the current schema."""
        for table, column, definition in _ADDED_COLUMNS:
            if not any(row[1] == column for row in self._writer.execute(f"PRAGMA table_info({table})")):
                self._writer.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def _refresh_fingerprints(self) -> None:
        """Recompute stored fingerprints when the matching rules (ignored fields) changed."""
        signature = f"v1:{self._ignore.signature}"
        row = self._writer.execute("SELECT value FROM meta WHERE key = 'match'").fetchone()
        if row and row[0] == signature:
            return
        with self._write_lock, self._writing() as db:
            last = 0
            while rows := db.execute("SELECT id, method, host, path, request_headers, request_body "
                                     "FROM exchanges WHERE id > ? ORDER BY id LIMIT 500", (last,)).fetchall():
                db.executemany("UPDATE exchanges SET fingerprint = ? WHERE id = ?", [
                    (self._form(m, h, p, Fields.from_json(hd).get("content-type", ""), b).fingerprint(), i)
                    for i, m, h, p, hd, b in rows])
                last = rows[-1][0]
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('match', ?)", (signature,))

    def _apply_retention(self, db: sqlite3.Connection) -> None:
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

    # -- lookups ------------------------------------------------------------------------

    def lookup(self, request: TracesData) -> TracesData | None:
        """Protocol section 2: the recorded answer to the request of the inject span, or None."""
        req = spans.lookup_request(request)
        if req is None:
            return None
        exchange = self.replay(req)
        return spans.answer(exchange) if exchange else None

    def replay(self, req: LookupRequest) -> Exchange | None:
        """The recorded exchange answering `req`, or None after recording why nothing did."""
        form = self._lookup_form(req)
        fingerprint = form.fingerprint()
        with self._reading() as db:
            exchange = self._next_answer(db, req.session_id, fingerprint)
            if exchange is None and form.body != "":
                # A recording without a request body (Softprobe's case profile does not require
                # one) answers its method, host, path and query whatever the body.
                exchange = self._next_answer(db, req.session_id, form.without_body().fingerprint())
            if exchange is None and self._on_miss is None:
                miss = self._diagnose(db, req, form)
        if exchange is None:
            if self._on_miss is not None:
                self._on_miss(MissedLookup(time.time_ns(), req))
            else:
                self._record_miss(miss)
        return exchange

    def _next_answer(self, db: sqlite3.Connection, session_id: str, fingerprint: str) -> Exchange | None:
        cue = self._replays.next(session_id, fingerprint, _Recordings(db))
        if cue is None:
            return None
        where = f"fingerprint = ? AND session_id = ? AND id <= ? AND {RECORDED}"
        args = (fingerprint, cue.session, cue.max_id)
        rows = db.execute(f"SELECT {_EXCHANGE_COLUMNS} FROM exchanges WHERE {where} "
                          "ORDER BY start_ns, id LIMIT 1 OFFSET ?", (*args, cue.position)).fetchall()
        if not rows:  # past the last recorded answer: repeat the last
            rows = db.execute(f"SELECT {_EXCHANGE_COLUMNS} FROM exchanges WHERE {where} "
                              "ORDER BY start_ns DESC, id DESC LIMIT 1", args).fetchall()
        return _exchange(rows[0]) if rows else None

    # -- misses -------------------------------------------------------------------------

    def _diagnose(self, db: sqlite3.Connection, req: LookupRequest, form: matching.RequestForm,
                  at_ns: int = 0) -> Miss:
        """The closest recorded request (same method, host and path first; then same host; then
        anything recent) and how it differs from the lookup."""
        best: tuple[list[str], Exchange] | None = None
        for where, args in (("method = ? AND host = ? AND route = ?", (form.method, req.host, form.route)),
                            ("host = ?", (req.host,)), ("1", ())):
            rows = db.execute(f"SELECT {_EXCHANGE_COLUMNS} FROM exchanges WHERE {where} AND {RECORDED} "
                              "ORDER BY id DESC LIMIT ?", (*args, MAX_CANDIDATES)).fetchall()
            for ex in map(_exchange, rows):
                recorded = self._exchange_form(ex)
                lines = matching.diff(recorded, form)
                if self.config.session_scope == "only" and ex.session_id not in own_sessions(req.session_id):
                    lines.append(f"session: recorded {ex.session_id!r}, got {req.session_id!r} "
                                 "(store.session_scope is 'only')")
                if best is None or len(lines) < len(best[0]):
                    best = (lines, ex)
            if best is not None:
                break
        closest, lines = "", ["nothing recorded to compare with"]
        if best is not None:
            lines, ex = best
            closest = f"#{ex.id} {ex.method} {ex.host}{ex.path} in session {ex.session_id}"
        return Miss(at_ns=at_ns or time.time_ns(), session_id=req.session_id, method=req.method,
                    host=req.host, path=req.path, closest=closest,
                    diff=matching.summarize(lines or ["no difference: matches a recording that "
                                                      "was deleted or recorded after replay began"]))

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (readers are never blocked by it)."""
        with self._write_lock, self._guard("cannot checkpoint"):
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def explain_misses(self, missed: Iterable[MissedLookup]) -> None:
        """Diagnose misses handed over by a read-only store (`on_miss`), and write them."""
        with self._reading() as db:
            misses = [self._diagnose(db, m.request, self._lookup_form(m.request), m.at_ns)
                      for m in missed]
        with self._miss_lock:
            self._pending_misses = [*self._pending_misses, *misses][-MAX_MISSES:]
        with self._write_lock, self._writing() as db:
            self._flush_misses(db)

    def _record_miss(self, miss: Miss) -> None:
        """Write now when the writer is free; otherwise the next write carries it, so a lookup
        never waits behind an ingest batch."""
        with self._miss_lock:
            self._pending_misses = [*self._pending_misses[-(MAX_MISSES - 1):], miss]
        if self.read_only or not self._write_lock.acquire(blocking=False):
            return
        try:
            if not self._closed:
                with self._writing() as db:
                    self._flush_misses(db)
        except StoreError as e:  # a diagnostic must never turn a miss into a failed lookup
            log.warning("%s", e)
        finally:
            self._write_lock.release()

    def _flush_misses(self, db: sqlite3.Connection) -> None:
        """Write pending misses (the caller holds `_write_lock`), keeping the newest MAX_MISSES."""
        with self._miss_lock:
            pending, self._pending_misses = self._pending_misses, []
        if not pending:
            return
        db.executemany(
            "INSERT INTO misses (at_ns, session_id, method, host, path, closest, diff) "
            "VALUES (?,?,?,?,?,?,?)",
            [(m.at_ns, m.session_id, m.method, m.host, m.path, m.closest, json.dumps(m.diff))
             for m in pending])
        db.execute("DELETE FROM misses WHERE id <= (SELECT id FROM misses ORDER BY id DESC "
                   "LIMIT 1 OFFSET ?)", (MAX_MISSES,))

    # -- browsing -----------------------------------------------------------------------

    def misses(self, limit: int = 50) -> list[Miss]:
        """The latest misses, newest first."""
        with self._reading() as db:
            rows = db.execute("SELECT at_ns, session_id, method, host, path, closest, diff FROM misses "
                              "ORDER BY id DESC LIMIT ?", (min(limit, MAX_MISSES),)).fetchall()
        return [Miss(*r[:6], diff=tuple(json.loads(r[6]))) for r in rows]

    def sessions(self, size: int = 20, service: str = "", status: int = 0, start_from_ns: int = 0,
                 start_to_ns: int = 0, cursor: str = "") -> SessionPage:
        """Sessions, most recently active first, a page at a time (`cursor` from the last page)."""
        clauses, args = ["1"], []
        if service:
            clauses.append("(service = ? OR EXISTS (SELECT 1 FROM exchanges e "
                           "WHERE e.session_id = s.id AND e.service = ?))")
            args += [service, service]
        if status:
            clauses.append("EXISTS (SELECT 1 FROM exchanges e WHERE e.session_id = s.id AND e.status = ?)")
            args.append(status)
        if start_from_ns:
            clauses.append("first_ns >= ?")
            args.append(start_from_ns)
        if start_to_ns:
            clauses.append("first_ns <= ?")
            args.append(start_to_ns)
        if cursor:
            clauses.append("(last_ns, id) < (?, ?)")
            args += _decode_cursor(cursor)
        size = max(1, min(size, MAX_PAGE))
        with self._reading() as db:
            rows = db.execute(
                "SELECT id, service, first_ns, last_ns, exchanges, errors FROM sessions s "
                f"WHERE {' AND '.join(clauses)} ORDER BY last_ns DESC, id DESC LIMIT ?",
                (*args, size + 1)).fetchall()
        page = [SessionSummary(*r) for r in rows[:size]]
        more = len(rows) > size
        return SessionPage(page, _encode_cursor(page[-1]) if more else "")

    def session(self, session_id: str, limit: int = 10_000) -> tuple[SessionSummary | None, list[Exchange]]:
        """One session and its exchanges in recorded order (at most `limit`)."""
        with self._reading() as db:
            row = db.execute("SELECT id, service, first_ns, last_ns, exchanges, errors FROM sessions "
                             "WHERE id = ?", (session_id,)).fetchone()
            rows = db.execute(f"SELECT {_EXCHANGE_COLUMNS} FROM exchanges WHERE session_id = ? "
                              "ORDER BY start_ns, id LIMIT ?", (session_id, limit)).fetchall()
        return (SessionSummary(*row) if row else None), [_exchange(r) for r in rows]

    def find(self, prefix: str, limit: int = 5) -> list[tuple[str, str]]:
        """What an id, or the start of one, names: ("session", id) and ("exchange", span id)
        pairs, at most `limit`; a session whose id is exactly `prefix` alone."""
        if not prefix:
            return []
        with self._reading() as db:
            if db.execute("SELECT 1 FROM sessions WHERE id = ?", (prefix,)).fetchone():
                return [("session", prefix)]
            # A range on the primary key, not LIKE: ids may hold % and _.
            sessions = db.execute("SELECT id FROM sessions WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                                  (prefix, prefix + "\U0010ffff", limit)).fetchall()
            exchanges = db.execute("SELECT span_id FROM exchanges WHERE substr(span_id, 1, ?) = ? "
                                   "ORDER BY id LIMIT ?", (len(prefix), prefix.lower(), limit)).fetchall()
        return ([("session", r[0]) for r in sessions] + [("exchange", r[0]) for r in exchanges])[:limit]

    def count_stored(self, spans: Iterable[tuple[str, str]]) -> int:
        """How many of these (trace id, span id) are stored: what a dead export worker committed
        before it could report."""
        with self._reading() as db:
            return sum(db.execute("SELECT 1 FROM exchanges WHERE trace_id = ? AND span_id = ?",
                                  key).fetchone() is not None for key in spans)

    def exchange(self, span_id: str) -> Exchange | None:
        """The latest recorded exchange with this span id."""
        with self._reading() as db:
            row = db.execute(f"SELECT {_EXCHANGE_COLUMNS} FROM exchanges WHERE span_id = ? "
                             "ORDER BY id DESC LIMIT 1", (span_id,)).fetchone()
        return _exchange(row) if row else None


class _Recordings:
    """The replay state machine's questions, answered by one reader connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def has(self, fingerprint: str, session_id: str) -> bool:
        return self.db.execute(f"SELECT 1 FROM exchanges WHERE fingerprint = ? AND session_id = ? "
                               f"AND {RECORDED} LIMIT 1", (fingerprint, session_id)).fetchone() is not None

    def latest_session(self, fingerprint: str) -> str | None:
        row = self.db.execute(f"SELECT session_id FROM exchanges WHERE fingerprint = ? AND {RECORDED} "
                              "ORDER BY id DESC LIMIT 1", (fingerprint,)).fetchone()
        return row[0] if row else None

    def last_id(self) -> int:
        return self.db.execute("SELECT coalesce(max(id), 0) FROM exchanges").fetchone()[0]


def _exchange(row: tuple) -> Exchange:
    values = list(row)
    values[11] = bool(values[11])
    values[14], values[15], values[23] = map(Fields.from_json, (values[14], values[15], values[23]))
    return Exchange(*values)


def _encode_cursor(last: SessionSummary) -> str:
    return base64.urlsafe_b64encode(json.dumps([last.last_ns, last.id]).encode()).decode()


def _decode_cursor(cursor: str) -> list:
    try:
        last_ns, session_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return [int(last_ns), str(session_id)]
    except (ValueError, TypeError) as e:
        raise ValueError(f"invalid cursor {cursor[:40]!r}") from e
