"""Versioned migrations: a store file's schema brought up to date, one step at a time.

`PRAGMA user_version` counts the steps a file has had. Opening it read-write applies the ones it
lacks, in order, each in a transaction with the version it reaches: a file is never left half
migrated, and a new file is made by the same steps as an old one is upgraded. A file from a newer
gateway (a version this code does not know) is refused: its schema would only be guessed at.

Gateways before versioning left every file at 1, whatever columns they had added to it since,
so a step that adds a column skips it when the file has it already.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from softprobe_gateway.store import schema
from softprobe_gateway.store.db import StoreError, transaction

Step = Callable[[sqlite3.Connection], None]


def _create_tables(db: sqlite3.Connection) -> None:
    db.execute(schema.create_exchanges())
    for statement in schema.TABLES:
        db.execute(statement)


def _add_columns(version: int) -> Step:
    """The step adding the exchanges columns of `version` (see `schema.COLUMNS`)."""

    def step(db: sqlite3.Connection) -> None:
        present = {row[1] for row in db.execute("PRAGMA table_info(exchanges)")}
        for column in schema.added_in(version):
            if column.name not in present:
                db.execute(f"ALTER TABLE exchanges ADD COLUMN {column.name} {column.sql}")

    return step


def _create_control_sessions(db: sqlite3.Connection) -> None:
    db.execute(schema.CONTROL_SESSIONS)


# STEPS[n] takes a file from version n to n + 1.
STEPS: tuple[Step, ...] = (
    _create_tables,  # 1: the tables as first released
    _add_columns(2),  # 2: answered_by (what the gateway answered itself)
    _add_columns(3),  # 3: error_message, request_original_size, response_original_size
    _add_columns(4),  # 4: response_trailers
    _create_control_sessions,  # 5: the control API's sessions
)
VERSION = len(STEPS)


def check(db: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; StoreError when a newer gateway wrote it."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > VERSION:
        raise StoreError(f"store {path}: written by a newer gateway (schema version {found}, this one "
                         f"knows {VERSION}): open it with that gateway, or set another store.path")
    return found


def upgrade(db: sqlite3.Connection, path: Path) -> None:
    """Apply the steps the file lacks, each once, in order; `db` is in autocommit mode."""
    for version in range(check(db, path) + 1, VERSION + 1):
        with transaction(db):
            if check(db, path) < version:  # not applied meanwhile by another process opening it
                STEPS[version - 1](db)
                db.execute(f"PRAGMA user_version = {version}")
