"""The PostgreSQL engine: one database that several `softprobe serve` replicas share
(`--store postgresql://USER[:PASS]@HOST:PORT/DB`, `$SOFTPROBE_STORE_URL`, `store.url`).

Everything a correct answer depends on is in the database, so any replica answers as one would:
recordings, sessions, misses, control sessions, replay and case positions (`postgres_positions`).
Connections come from a psycopg pool, in autocommit (a position advances in one statement); a
write is one transaction. An export retried on another replica is recorded once: the span's id
is unique, and its insert does nothing on conflict. Opened read-write, the schema is migrated
under an advisory lock (`postgres_schema`); retention is batched deletes under a try-lock, so one
replica at a time runs it, and only once the table is past its limit by `RETENTION_SLACK`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import describe
from softprobe_gateway.store import ingest, postgres_schema
from softprobe_gateway.store.db import Db, StoreError
from softprobe_gateway.store.forms import Forms
from softprobe_gateway.store.model import Recording
from softprobe_gateway.store.postgres_positions import CASE_NEXT, SharedReplays
from softprobe_gateway.store.schema import Codec, Layout

POOL_SIZE = 16  # connections per process (serve's request threads, its lookups)
CONNECT_TIMEOUT_S = 10
DELETE_BATCH = 5000  # rows per retention transaction
RETENTION_SLACK = 0.01  # of max_exchanges: how far past it the table may be before a replica prunes
REPLAYS_EVERY_S = 60.0  # lookup sessions idle past their reset (or beyond MAX_REPLAYS) pruned this often
MAX_REPLAYS = 10_000

BYTES = Codec(lambda text: text.encode("utf-8", "surrogatepass"),
              lambda data: bytes(data).decode("utf-8", "surrogatepass"))


def one_line(e: BaseException) -> str:
    """psycopg's message on one line, as StoreErrors are (its own spans several)."""
    return " ".join(str(e).split()) or type(e).__name__


class PostgresEngine:
    kind = "postgresql"
    layout = Layout({name: BYTES for name in postgres_schema.BYTEA_COLUMNS})

    def __init__(self, config: StoreConfig, forms: Forms, *, read_only: bool = False) -> None:
        self.config, self.read_only, self.name = config, read_only, describe(config)
        self._gaps = 0  # ids the sequence skipped among the kept rows, as of the last prune
        self._replays_pruned = 0.0
        with self._guard("cannot open"):
            with connect(config.url) as conn:
                if read_only:
                    postgres_schema.check(conn, self.name, current=True)
                else:
                    with postgres_schema.locked(conn, postgres_schema.MIGRATE_LOCK):
                        postgres_schema.migrate(conn, self.name)
                        with conn.transaction():
                            ingest.refresh_fingerprints(Db(conn, self.layout, self.kind), forms)
            self._pool = ConnectionPool(config.url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT_S,
                                        kwargs={"autocommit": True}, name="softprobe-store", open=False)
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        if not read_only:
            self.retain(now=True)

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """psycopg's errors as one-line StoreErrors naming the database (never its password)."""
        try:
            yield
        except psycopg.Error as e:
            raise StoreError(f"store {self.name}: {action}: {one_line(e)}") from None

    @contextmanager
    def reading(self) -> Iterator[Db]:
        with self._guard("cannot read"), self._pool.connection() as conn:
            yield Db(conn, self.layout, self.kind)

    @contextmanager
    def writing(self) -> Iterator[Db]:
        if self.read_only:
            raise StoreError(f"store {self.name}: opened read-only")
        with self.side_writing() as db:
            yield db

    @contextmanager
    def try_writing(self) -> Iterator[Db | None]:
        """Writers do not wait for each other here (row locks, not one writer): a transaction."""
        if self.read_only:
            yield None
            return
        with self.writing() as db:
            yield db

    @contextmanager
    def side_writing(self) -> Iterator[Db]:
        with self._guard("cannot write"), self._pool.connection() as conn, conn.transaction():
            yield Db(conn, self.layout, self.kind)

    def insert(self, db: Db, rows: ingest.Rows) -> list[Recording]:
        """INSERTs that skip spans already stored (`ON CONFLICT DO NOTHING`), then one upsert of
        the sessions they add to."""
        names = self.layout.names
        stored: list[Recording] = []
        with db.conn.cursor() as cursor:
            # One statement, parsed and prepared once, its rows sent in a pipeline.
            cursor.executemany(f"INSERT INTO exchanges ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) "
                               "ON CONFLICT (trace_id, span_id) DO NOTHING RETURNING 1",
                               [[row[name] for name in names] for _, row in rows], returning=True)
            for ex, _ in rows:  # one result per row: a row when it was new (a span twice: once)
                if cursor.fetchone() is not None:
                    stored.append(ex)
                cursor.nextset()
        if counts := ingest.session_counts(stored):
            db.conn.execute(
                "INSERT INTO sessions (id, service, first_ns, last_ns, exchanges, errors) VALUES "
                f"{', '.join(['(%s, %s, %s, %s, %s, %s)'] * len(counts))} ON CONFLICT (id) DO UPDATE SET "
                "first_ns = LEAST(sessions.first_ns, excluded.first_ns), "
                "last_ns = GREATEST(sessions.last_ns, excluded.last_ns), "
                "exchanges = sessions.exchanges + excluded.exchanges, errors = sessions.errors + excluded.errors",
                [value for session in counts for value in session])
        return stored

    # -- retention ----------------------------------------------------------------------

    def retain(self, *, now: bool = False) -> None:
        """Prune when the table is past `max_exchanges` (by more than the slack, unless `now`) or
        holds exchanges older than `max_age_hours`; a replica that finds another pruning skips."""
        with self._guard("cannot apply retention"), self._pool.connection() as conn:
            lowest, highest, oldest = conn.execute(
                "SELECT min(id), max(id), min(ingested_ns) FROM exchanges").fetchone()
            if lowest is None:
                return
            over = highest - lowest + 1 - self._gaps - self.config.max_exchanges
            cutoff_ns = time.time_ns() - int(self.config.max_age_hours * 3600e9) if self.config.max_age_hours else 0
            replays_due = time.monotonic() - self._replays_pruned > REPLAYS_EVERY_S
            due = over > (0 if now else int(self.config.max_exchanges * RETENTION_SLACK)) or oldest < cutoff_ns
            if not (due or replays_due):
                return
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (postgres_schema.RETENTION_LOCK,)).fetchone()[0]:
                return
            try:
                if due:
                    self._prune(conn, cutoff_ns)
                if replays_due:
                    self._prune_replays(conn)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (postgres_schema.RETENTION_LOCK,))

    def _prune(self, conn: psycopg.Connection, cutoff_ns: int) -> None:
        """Batched deletes, each its own transaction, and the sessions they touched fixed."""
        last = conn.execute("SELECT id FROM exchanges ORDER BY id DESC LIMIT 1 OFFSET %s",
                            (self.config.max_exchanges,)).fetchone()
        if last is not None:
            self._delete(conn, "id <= %s ORDER BY id", (last[0],))
            lowest, highest = conn.execute("SELECT min(id), max(id) FROM exchanges").fetchone()
            self._gaps = max(0, highest - lowest + 1 - self.config.max_exchanges) if lowest is not None else 0
        if cutoff_ns:
            self._delete(conn, "ingested_ns < %s", (cutoff_ns,))

    def _delete(self, conn: psycopg.Connection, where: str, args: tuple[object, ...]) -> None:
        while True:
            with conn.transaction():
                touched = sorted({r[0] for r in conn.execute(
                    f"DELETE FROM exchanges WHERE id IN (SELECT id FROM exchanges WHERE {where} LIMIT %s) "
                    "RETURNING session_id", (*args, DELETE_BATCH))})
                if touched:
                    conn.execute("DELETE FROM sessions s WHERE id = ANY(%s) AND NOT EXISTS "
                                 "(SELECT 1 FROM exchanges e WHERE e.session_id = s.id)", (touched,))
                    conn.execute(
                        "UPDATE sessions s SET first_ns = x.first_ns, last_ns = x.last_ns, exchanges = x.n, "
                        "errors = x.errors FROM (SELECT session_id, min(start_ns) AS first_ns, "
                        "GREATEST(max(end_ns), max(start_ns)) AS last_ns, count(*) AS n, sum(error) AS errors "
                        "FROM exchanges WHERE session_id = ANY(%s) GROUP BY session_id) x "
                        "WHERE s.id = x.session_id", (touched,))
            if not touched:
                return

    def _prune_replays(self, conn: psycopg.Connection) -> None:
        """Forget lookup sessions idle past their reset, or beyond the newest MAX_REPLAYS."""
        self._replays_pruned = time.monotonic()
        reset_ns = int(self.config.sequence_reset_s * 1e9)
        with conn.transaction():
            if reset_ns:
                conn.execute("DELETE FROM replays WHERE last_seen_ns < %s", (time.time_ns() - reset_ns,))
            conn.execute("DELETE FROM replays WHERE id IN (SELECT id FROM replays ORDER BY last_seen_ns DESC "
                         "OFFSET %s)", (MAX_REPLAYS,))
            conn.execute("DELETE FROM replay_positions p WHERE NOT EXISTS "
                         "(SELECT 1 FROM replays r WHERE r.id = p.replay_id AND r.epoch = p.epoch)")

    # -- positions ----------------------------------------------------------------------

    def replays(self, db: Db) -> SharedReplays:
        return SharedReplays(db.conn, self.config.session_scope, self.config.sequence_reset_s)

    def case_position(self, session_id: str, revision: int, fingerprint: str) -> int:
        with self._guard("cannot count"), self._pool.connection() as conn:
            return conn.execute(CASE_NEXT, (session_id, revision, fingerprint)).fetchone()[0]

    def forget_case(self, session_id: str) -> None:
        with self._guard("cannot write"), self._pool.connection() as conn:
            conn.execute("DELETE FROM case_positions WHERE session_id = %s", (session_id,))

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints by itself."""

    def close(self) -> None:
        self._pool.close()


def connect(url: str) -> psycopg.Connection:
    """One autocommit connection (migrations, the CLI), failing within CONNECT_TIMEOUT_S."""
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


def migrate(url: str) -> tuple[int, int]:
    """`softprobe store migrate`: the database brought to this code's version under the migration
    lock; (version before, version after). StoreError (one line) when it cannot be."""
    name = describe(StoreConfig(url=url))
    try:
        with connect(url) as conn, postgres_schema.locked(conn, postgres_schema.MIGRATE_LOCK):
            return postgres_schema.migrate(conn, name)
    except psycopg.Error as e:
        raise StoreError(f"store {name}: cannot migrate: {one_line(e)}") from None
