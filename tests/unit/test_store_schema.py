"""The store file's schema: one table of columns, and files of every earlier version upgraded.

The old files here are built with raw sqlite3, with the tables as earlier gateways created them.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store import migrations, schema
from softprobe_gateway.store.model import Fields, Recording
from softprobe_gateway.store.store import Store, StoreError

from testkit.spans import answer_of, extract_span, inject, traces

# The tables as the first gateway created them; later ones added columns, leaving user_version at 1.
FIRST_EXCHANGES = """
CREATE TABLE exchanges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL, trace_id TEXT NOT NULL, span_id TEXT NOT NULL,
    parent_span_id TEXT NOT NULL, service TEXT NOT NULL, direction TEXT NOT NULL,
    kind TEXT NOT NULL, method TEXT NOT NULL, host TEXT NOT NULL, path TEXT NOT NULL,
    route TEXT NOT NULL, status INTEGER NOT NULL, error INTEGER NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, ingested_ns INTEGER NOT NULL,
    request_headers TEXT NOT NULL, response_headers TEXT NOT NULL,
    request_body TEXT NOT NULL, response_body TEXT NOT NULL, fingerprint TEXT NOT NULL
);
CREATE UNIQUE INDEX exchanges_span ON exchanges (trace_id, span_id);
CREATE INDEX exchanges_replay ON exchanges (fingerprint, session_id, start_ns, id);
CREATE INDEX exchanges_request ON exchanges (method, host, route);
CREATE INDEX exchanges_session ON exchanges (session_id, start_ns);
CREATE INDEX exchanges_age ON exchanges (ingested_ns);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL, exchanges INTEGER NOT NULL, errors INTEGER NOT NULL
);
CREATE INDEX sessions_recent ON sessions (last_ns, id);
CREATE TABLE misses (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_ns INTEGER NOT NULL, session_id TEXT NOT NULL,
    method TEXT NOT NULL, host TEXT NOT NULL, path TEXT NOT NULL, closest TEXT NOT NULL,
    diff TEXT NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def old_file(path: Path, *, later_sql: str = "") -> None:
    """A store file of the first version with one recorded exchange (headers as the JSON object
    that gateway wrote, a fingerprint of matching rules since changed), then `later_sql`."""
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_EXCHANGES + later_sql)
        db.execute("INSERT INTO exchanges (session_id, trace_id, span_id, parent_span_id, service, direction, "
                   "kind, method, host, path, route, status, error, start_ns, end_ns, ingested_ns, "
                   "request_headers, response_headers, request_body, response_body, fingerprint) VALUES "
                   "('old', 'aa', 'bb', '', 'checkout', 'outbound', 'client', 'GET', 'api.test:80', '/items', "
                   "'/items', 200, 0, 10, 20, strftime('%s') * 1000000000, "
                   "'{\":method\": \"GET\", \":path\": \"/items\"}', '{\"content-type\": \"application/json\"}', "
                   "'', '\"from the old file\"', 'stale')")
        db.execute("INSERT INTO sessions VALUES ('old', 'checkout', 10, 20, 1, 0)")
        db.execute("INSERT INTO meta VALUES ('match', 'v1:stale')")
        db.execute("PRAGMA user_version = 1")
    db.close()


def columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        names = [row[1] for row in db.execute("PRAGMA table_info(exchanges)")]
    db.close()
    return names


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
    return version


def test_one_table_of_columns_makes_the_file_and_every_exchange_field(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"
    Store(StoreConfig(path=str(path))).close()
    assert columns(path) == [c.name for c in schema.COLUMNS]
    assert user_version(path) == migrations.VERSION
    read = [c.name for c in schema.COLUMNS if c.source is not schema.Source.DERIVED]
    assert sorted(read) == sorted(f.name for f in dataclasses.fields(Recording))


def test_an_exchange_reads_back_as_it_was_added(open_store) -> None:
    ex = Recording(session_id="s", trace_id="ab" * 16, span_id="cd" * 8, parent_span_id="ef" * 8,
                   service="svc", direction="outbound", kind="client", method="POST", host="api.test:80",
                   path="/pay?x=1", status=502, error=True, start_ns=5, end_ns=1_700_000_000_000_000_009,
                   request_headers=Fields([(":method", "POST"), ("x-a", "1"), ("x-a", "2")]),
                   response_headers=Fields([(":status", "502")]), request_body="{}", response_body="bad\x00 \u00e9",
                   answered_by="mock", error_message="upstream reset", request_original_size=7,
                   response_original_size=8, response_trailers=Fields([("grpc-status", "14")]))
    with open_store() as store:  # a NUL and a non-ASCII body, a time past 32 bits: as they were
        assert store.add([ex]) == 1
        stored = store.exchange(ex.span_id)
    assert stored.id > 0 and stored == dataclasses.replace(ex, id=stored.id)


@pytest.mark.parametrize("later_sql", [
    "",  # the first version's file, none of the added columns
    # what the later gateways did, each leaving the file at user_version 1
    "ALTER TABLE exchanges ADD COLUMN answered_by TEXT NOT NULL DEFAULT '';",
    ("ALTER TABLE exchanges ADD COLUMN answered_by TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE exchanges ADD COLUMN error_message TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE exchanges ADD COLUMN request_original_size INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE exchanges ADD COLUMN response_original_size INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE exchanges ADD COLUMN response_trailers TEXT NOT NULL DEFAULT '[]';"),
], ids=["first", "answered_by", "all-columns"])
def test_a_file_of_an_earlier_version_is_brought_up_to_date(tmp_path: Path, later_sql: str) -> None:
    path = tmp_path / "sp.db"
    old_file(path, later_sql=later_sql)
    with Store(StoreConfig(path=str(path))) as store:
        summary, (ex,) = store.session("old")
        assert summary.exchanges == 1
        assert (ex.method, ex.path, ex.response_body, ex.answered_by) == ("GET", "/items", '"from the old file"', "")
        assert ex.request_headers.get(":path") == "/items" and ex.response_trailers == Fields()
        # its fingerprint was recomputed: the old recording answers
        assert answer_of(store.lookup(inject(session="old"))) == (200, '"from the old file"')
        assert store.ingest(traces(extract_span(session="new", path="/new", answer='"new"'))) == 1
        assert answer_of(store.lookup(inject(session="new", path="/new"))) == (200, '"new"')
    assert user_version(path) == migrations.VERSION
    assert sorted(columns(path)) == sorted(c.name for c in schema.COLUMNS)
    with Store(StoreConfig(path=str(path)), read_only=True) as store:
        assert [s.id for s in store.sessions().sessions] == ["new", "old"]


def test_read_only_an_old_file_is_not_upgraded_but_says_how(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"
    old_file(path)
    with pytest.raises(StoreError, match="written by an older gateway"):
        Store(StoreConfig(path=str(path)), read_only=True)
    assert user_version(path) == 1


@pytest.mark.parametrize("read_only", [False, True])
def test_a_file_of_a_newer_version_is_refused(tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "sp.db"
    Store(StoreConfig(path=str(path))).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {migrations.VERSION + 1}")
    db.close()
    with pytest.raises(StoreError) as e:
        Store(StoreConfig(path=str(path)), read_only=read_only)
    assert str(e.value).startswith(f"store {path}: written by a newer gateway")
    assert "\n" not in str(e.value)
    assert user_version(path) == migrations.VERSION + 1


def test_a_failed_step_leaves_the_file_at_the_version_before(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sp.db"
    old_file(path)

    def broken(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE exchanges ADD COLUMN half_done TEXT NOT NULL DEFAULT ''")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(migrations, "STEPS", (*migrations.STEPS[:2], broken, *migrations.STEPS[3:]))
    with pytest.raises(StoreError, match="cannot open: disk I/O error"):
        Store(StoreConfig(path=str(path)))
    assert user_version(path) == 2 and "half_done" not in columns(path)
