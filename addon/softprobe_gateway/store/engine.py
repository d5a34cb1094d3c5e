"""The store's engines behind one interface: SQLite (`sqlite_engine`, one file, the embedded
default) and PostgreSQL (`postgres_engine`, shared by several `softprobe serve` replicas).

`Store` (store.py) does everything in terms of an `Engine`: it asks for a connection to read or to
write with, and leaves to the engine what differs: how rows go in (and an export retry's go in
once), retention, where replay positions live (a process's memory for SQLite, the database for
PostgreSQL, so any replica gives the Nth identical request the Nth recorded answer), and how the
schema is migrated. The SQL of the shared modules works on both (see `db.Db`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from softprobe_gateway.store.db import Db
from softprobe_gateway.store.ingest import Rows
from softprobe_gateway.store.model import Recording
from softprobe_gateway.store.positions import Cue, Recordings
from softprobe_gateway.store.schema import Layout


class Positions(Protocol):
    """Replay positions (see `positions.Replays`): the cue of the next lookup of a request."""

    def next(self, session_id: str, fingerprint: str, recordings: Recordings) -> Cue | None: ...


class Engine(Protocol):
    kind: str  # "sqlite" or "postgresql"
    name: str  # what messages name: the file, or the database's URL without its password
    read_only: bool
    layout: Layout

    def reading(self) -> AbstractContextManager[Db]:
        """A connection to read with (its writes, replay positions, commit at once)."""

    def writing(self) -> AbstractContextManager[Db]:
        """One write transaction, committed when the block ends; StoreError when read-only."""

    def try_writing(self) -> AbstractContextManager[Db | None]:
        """A write transaction if one is free at once, else None: a miss never waits for one."""

    def side_writing(self) -> AbstractContextManager[Db]:
        """A short write transaction, allowed on a read-only store too (control-session counters)."""

    def insert(self, db: Db, rows: Rows) -> list[Recording]:
        """Store the rows whose span is not stored yet, in the caller's transaction; the new ones."""

    def retain(self, *, now: bool = False) -> None:
        """Retention (`store.max_exchanges`, `store.max_age_hours`), when it is due (`now`: at once)."""

    def replays(self, db: Db) -> Positions:
        """The replay positions, asked on `db`."""

    def case_position(self, session_id: str, revision: int, fingerprint: str) -> int:
        """How many answers a control session's loaded case (at `revision`) gave to the request
        before this one, counting this one."""

    def forget_case(self, session_id: str) -> None:
        """Drop a closed control session's case positions."""

    def checkpoint(self) -> None: ...

    def close(self) -> None: ...
