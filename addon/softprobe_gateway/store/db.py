"""What every part of the store shares whatever the engine: its one error, a connection as the
store's modules use it (`Db`), and SQLite's write transaction.

The modules that work on any engine's tables (ingest, answering, misses, browse, control) write
their SQL once, with `?` parameters and nothing but what SQLite and PostgreSQL both accept; `Db`
hands it to the engine's driver, rewritten for psycopg's `%s` where the engine is PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from softprobe_gateway.store.schema import Layout


class StoreError(Exception):
    """The store cannot be used; the message is one line naming the file (or the database)."""


@lru_cache(maxsize=512)
def to_psycopg(sql: str) -> str:
    """`?` parameters as psycopg's `%s` (the shared SQL has no `?` or `%` of its own otherwise)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Db:
    """One connection of either engine: `execute` and `executemany` with `?` parameters, and the
    engine's `layout` to read an exchange's row with."""

    def __init__(self, conn: Any, layout: Layout, engine: str) -> None:
        self.conn, self.layout, self.engine = conn, layout, engine
        self._sql = to_psycopg if engine == "postgresql" else str

    def execute(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> Any:
        """A cursor over the statement's rows (`fetchone`, `fetchall`, iteration, `rowcount`)."""
        return self.conn.execute(self._sql(sql), args)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self.engine == "sqlite":
            self.conn.executemany(sql, rows)
            return
        with self.conn.cursor() as cursor:
            cursor.executemany(self._sql(sql), list(rows))

    def exchange(self, values: Sequence[Any]):  # -> Recording
        return self.layout.exchange(values)


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One SQLite write transaction, taken at once (IMMEDIATE: a reader never has to upgrade to a
    writer mid-way), committed when the block ends and rolled back when it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
