"""The store file's tables. The exchanges table is one list of columns, `COLUMNS`: its CREATE
TABLE, the SELECT list, the INSERT and the conversion between a row and a `Recording` are all
derived from it, by name, so a column is added in one place (with the schema version that adds
it: `migrations` applies it to existing files). The other tables are few and plain SQL.

An exchange the gateway answered itself (`answered_by`: a lookup hit, a mock, a strict replay's
refusal) is stored and shown like any other, but it is no recording: queries that answer a
lookup or explain a miss select `RECORDED` rows only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from softprobe_gateway.store.model import Fields, Recording

RECORDED = "answered_by = ''"  # a WHERE clause


class Source(Enum):
    """Where a column's value comes from."""

    FIELD = "the Recording field of the column's name: written, and read back"
    ROW_ID = "SQLite, the row id: read back into `Recording.id`, never written"
    DERIVED = "the insert, for queries (route, fingerprint, when stored): written, never read back"


@dataclass(frozen=True, slots=True)
class Codec:
    """How a Recording field's value is written to its column, and read back."""

    write: Callable[[Any], Any]
    read: Callable[[Any], Any]


def _as_is(value: Any) -> Any:
    return value


AS_IS = Codec(_as_is, _as_is)
FLAG = Codec(int, bool)  # SQLite has no booleans
HEADER_FIELDS = Codec(Fields.to_json, Fields.from_json)  # a JSON list of (name, value) pairs


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the exchanges table; a FIELD column is named after its Recording field."""

    name: str
    sql: str  # type, constraints and default
    since: int = 1  # the schema version that added it; added later, it needs a default
    source: Source = Source.FIELD
    codec: Codec = AS_IS


# In the order of the columns in a file (an added column comes last).
COLUMNS: tuple[Column, ...] = (
    Column("id", "INTEGER PRIMARY KEY AUTOINCREMENT", source=Source.ROW_ID),
    Column("session_id", "TEXT NOT NULL"),
    Column("trace_id", "TEXT NOT NULL"),
    Column("span_id", "TEXT NOT NULL"),
    Column("parent_span_id", "TEXT NOT NULL"),
    Column("service", "TEXT NOT NULL"),
    Column("direction", "TEXT NOT NULL"),
    Column("kind", "TEXT NOT NULL"),
    Column("method", "TEXT NOT NULL"),
    Column("host", "TEXT NOT NULL"),
    Column("path", "TEXT NOT NULL"),
    Column("route", "TEXT NOT NULL", source=Source.DERIVED),  # the path without its query
    Column("status", "INTEGER NOT NULL"),
    Column("error", "INTEGER NOT NULL", codec=FLAG),
    Column("start_ns", "INTEGER NOT NULL"),
    Column("end_ns", "INTEGER NOT NULL"),
    # When it was stored: retention's clock (span clocks are other machines').
    Column("ingested_ns", "INTEGER NOT NULL", source=Source.DERIVED),
    Column("request_headers", "TEXT NOT NULL", codec=HEADER_FIELDS),
    Column("response_headers", "TEXT NOT NULL", codec=HEADER_FIELDS),
    Column("request_body", "TEXT NOT NULL"),
    Column("response_body", "TEXT NOT NULL"),
    Column("fingerprint", "TEXT NOT NULL", source=Source.DERIVED),  # the request's, see `matching`
    Column("answered_by", "TEXT NOT NULL DEFAULT ''", since=2),
    Column("error_message", "TEXT NOT NULL DEFAULT ''", since=3),
    Column("request_original_size", "INTEGER NOT NULL DEFAULT 0", since=3),
    Column("response_original_size", "INTEGER NOT NULL DEFAULT 0", since=3),
    Column("response_trailers", "TEXT NOT NULL DEFAULT '[]'", since=4, codec=HEADER_FIELDS),
)
_READ = tuple(c for c in COLUMNS if c.source is not Source.DERIVED)
_WRITTEN = tuple(c for c in COLUMNS if c.source is not Source.ROW_ID)


class Layout:
    """How one engine keeps the columns: each column's codec, some replaced by the engine's own
    (PostgreSQL keeps bodies as bytea). The (name, codec function) pairs are looked up once:
    every exchange stored or read goes through them."""

    def __init__(self, codecs: dict[str, Codec] | None = None) -> None:
        codecs = codecs or {}
        self.names = tuple(c.name for c in _WRITTEN)
        self._writers = tuple((c.name, codecs.get(c.name, c.codec).write) for c in _WRITTEN
                              if c.source is Source.FIELD)
        self._readers = tuple((c.name, codecs.get(c.name, c.codec).read) for c in _READ)

    def row(self, ex: Recording, **derived: Any) -> dict[str, Any]:
        """The INSERT's parameters for `ex`; `derived` has the values of the DERIVED columns."""
        return {**{name: write(getattr(ex, name)) for name, write in self._writers}, **derived}

    def exchange(self, values: Sequence[Any]) -> Recording:
        """The exchange in a row of `SELECT {SELECT}`."""
        return Recording(**{name: read(value) for (name, read), value in zip(self._readers, values, strict=True)})


SQLITE = Layout()

# The columns of an exchange: `SELECT {SELECT} FROM exchanges ...`, each row read by `exchange`.
SELECT = ", ".join(c.name for c in _READ)
# One exchange, unless its span is stored already (an export retry). Not INSERT OR IGNORE: an
# ignored row would still use up a row id (see `ingest.apply_retention`). Parameters from `row`.
INSERT = (f"INSERT INTO exchanges ({', '.join(c.name for c in _WRITTEN)}) "
          f"SELECT {', '.join(f':{c.name}' for c in _WRITTEN)} "
          "WHERE NOT EXISTS (SELECT 1 FROM exchanges WHERE trace_id = :trace_id AND span_id = :span_id)")

# The other tables and the indexes, as the first version created them.
TABLES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS exchanges_span ON exchanges (trace_id, span_id)",
    "CREATE INDEX IF NOT EXISTS exchanges_replay ON exchanges (fingerprint, session_id, start_ns, id)",
    "CREATE INDEX IF NOT EXISTS exchanges_request ON exchanges (method, host, route)",
    "CREATE INDEX IF NOT EXISTS exchanges_session ON exchanges (session_id, start_ns)",
    "CREATE INDEX IF NOT EXISTS exchanges_age ON exchanges (ingested_ns)",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, service TEXT NOT NULL, first_ns INTEGER NOT NULL,
        last_ns INTEGER NOT NULL, exchanges INTEGER NOT NULL, errors INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS sessions_recent ON sessions (last_ns, id)",
    """CREATE TABLE IF NOT EXISTS misses (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at_ns INTEGER NOT NULL, session_id TEXT NOT NULL,
        method TEXT NOT NULL, host TEXT NOT NULL, path TEXT NOT NULL, closest TEXT NOT NULL,
        diff TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


# Version 5: the control API's sessions (see `control`), kept so several gateways and a
# restarted `softprobe serve` see the same ones. Documents are JSON text.
CONTROL_SESSIONS = """CREATE TABLE IF NOT EXISTS control_sessions (
    id TEXT PRIMARY KEY, mode TEXT NOT NULL, revision INTEGER NOT NULL, closed INTEGER NOT NULL,
    policy TEXT NOT NULL, rules TEXT NOT NULL, case_document TEXT NOT NULL, fixtures TEXT NOT NULL,
    injected INTEGER NOT NULL, extracted INTEGER NOT NULL, strict_misses INTEGER NOT NULL,
    created_ns INTEGER NOT NULL)"""


def create_exchanges(columns: Sequence[Column] | None = None) -> str:
    """The exchanges table as the first version created it (`added_in` gives the rest), or with
    `columns` (an engine's whole current table)."""
    columns = ", ".join(f"{c.name} {c.sql}" for c in (added_in(1) if columns is None else columns))
    return f"CREATE TABLE IF NOT EXISTS exchanges ({columns})"


def added_in(version: int) -> tuple[Column, ...]:
    return tuple(c for c in COLUMNS if c.since == version)


row = SQLITE.row
exchange = SQLITE.exchange
