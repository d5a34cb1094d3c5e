"""The PostgreSQL engine as several `softprobe serve` replicas use it: each replica is a `Store` of
its own (its own pool, its own process memory) on one real database (testkit.postgres). Replay
and case positions, control sessions and closes are decided in the database; migrations run once
however many start together; a newer database is refused in one line; retention runs on one
replica at a time. The behaviour both engines share is tests/unit/test_store.py's, run on both."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.formats import spans
from softprobe_gateway.formats.casefile import case_document
from softprobe_gateway.store import postgres_schema
from softprobe_gateway.store.captures import CaptureCases
from softprobe_gateway.store.control import Sessions
from softprobe_gateway.server.control_api import ControlApi
from softprobe_gateway.store.session_answers import SessionAnswers
from softprobe_gateway.store.store import Store, StoreError, open_store

from testkit.cli import run
from testkit.spans import answer_of, extract_span, inject, traces
from testkit.support import BIN


@pytest.fixture
def url(postgres) -> str:
    return postgres.database(migrated=True)


@pytest.fixture
def replicas(url: str):
    """Two stores on one database: what two `serve` replicas hold."""
    stores = [Store(StoreConfig(url=url)) for _ in range(2)]
    yield stores
    for store in stores:
        store.close()


def test_the_nth_identical_request_gets_the_nth_answer_whichever_replica_asks(replicas) -> None:
    a, b = replicas
    a.ingest(traces(*(extract_span(path="/counter", session="rec", answer=str(n)) for n in (1, 2, 3))))
    asked = [store.lookup(inject(path="/counter", session="rec~run1")) for store in (a, b, a, b, b)]
    assert [answer_of(r)[1] for r in asked] == ["1", "2", "3", "3", "3"]
    # another run walks the recording from its first answer, on either replica
    assert answer_of(b.lookup(inject(path="/counter", session="rec~run2")))[1] == "1"


def test_positions_advance_atomically_under_concurrent_lookups(replicas) -> None:
    a, b = replicas
    a.ingest(traces(*(extract_span(path="/seq", session="rec", answer=str(n)) for n in range(40))))
    answers: list[str] = []
    lock, start = threading.Lock(), threading.Barrier(4)

    def ask(store: Store) -> None:
        start.wait()
        for _ in range(10):
            got = answer_of(store.lookup(inject(path="/seq", session="rec~load")))[1]
            with lock:
                answers.append(got)

    threads = [threading.Thread(target=ask, args=(store,)) for store in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers, key=int) == [str(n) for n in range(40)]  # each answer given once


def test_a_control_session_is_seen_at_once_by_the_other_replica(replicas) -> None:
    a, b = (Sessions(store) for store in replicas)
    session = a.create("replay", {"externalHttp": "strict"})
    assert b.get(session.id).policy == {"externalHttp": "strict"}
    a.replace(session.id, "rules", {"rules": [{"id": "r"}]})
    assert b.revision(session.id) == session.revision + 1 and b.get(session.id).rule_list == [{"id": "r"}]
    b.count(session.id, "injected")
    assert a.get(session.id).injected == 1
    assert b.close(session.id) and a.get(session.id) is None and a.revision(session.id) is None


def test_a_loaded_case_answers_in_order_across_replicas(replicas) -> None:
    recorded = spans.extract_exchanges(traces(*(extract_span(path="/price", host="prices.test:80", answer=str(n))
                                                for n in (1, 2))))
    case = case_document("twice", recorded, datetime.now(timezone.utc))
    apis = [ControlApi(Sessions(store), lambda _id: None) for store in replicas]
    status, created = apis[0].handle("POST", "/v1/sessions", json.dumps({"mode": "replay"}).encode())
    sid = created["sessionId"]
    assert apis[1].handle("POST", f"/v1/sessions/{sid}/load-case", json.dumps(case).encode())[0] == 200
    answers = [SessionAnswers(store, Sessions(store)) for store in replicas]
    got = [answer_of(answers[n % 2].lookup(inject(path="/price", host="prices.test:80", session=sid)).traces)[1]
           for n in range(3)]
    assert got == ["1", "2", "2"]


def test_two_closes_at_once_on_two_replicas_write_the_case_once(replicas, tmp_path: Path) -> None:
    apis = [ControlApi(Sessions(store), lambda _id: None, CaptureCases(root=tmp_path)) for store in replicas]
    for attempt in range(5):
        sid = apis[0].handle("POST", "/v1/sessions", b'{"mode": "capture"}')[1]["sessionId"]
        replicas[0].ingest(traces(extract_span(session=sid)))
        start, replies = threading.Barrier(2), [None, None]

        def close(n: int) -> None:
            start.wait()
            replies[n] = apis[n].handle("POST", f"/v1/sessions/{sid}/close", b"", f"out={attempt}-{n}.json")

        threads = [threading.Thread(target=close, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r[0] for r in replies) == [200, 404]
        assert len(list(tmp_path.glob(f"{attempt}-*.json"))) == 1


def test_an_export_retried_on_another_replica_is_recorded_once(replicas) -> None:
    batch = traces(*(extract_span(session="retried", path=f"/{n}") for n in range(50)))
    counted, start = [], threading.Barrier(2)

    def send(store: Store) -> None:
        start.wait()
        counted.append(store.ingest(batch))

    threads = [threading.Thread(target=send, args=(store,)) for store in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(counted) == [0, 50]
    summary, exchanges = replicas[1].session("retried")
    assert summary.exchanges == 50 and len(exchanges) == 50


def test_retention_runs_on_one_replica_at_a_time(url: str) -> None:
    with Store(StoreConfig(url=url, max_exchanges=5)) as store, psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (postgres_schema.RETENTION_LOCK,))  # another replica pruning
        store.ingest(traces(*(extract_span(session="s", path=f"/{n}") for n in range(8))))
        assert store.session("s")[0].exchanges == 8  # left to the replica that holds the lock
        other.execute("SELECT pg_advisory_unlock(%s)", (postgres_schema.RETENTION_LOCK,))
        store.ingest(traces(extract_span(session="s", path="/8")))
        summary, exchanges = store.session("s")
        assert summary.exchanges == 5 and [ex.path for ex in exchanges] == [f"/{n}" for n in range(4, 9)]


def test_replicas_migrating_at_once_apply_each_step_once(postgres) -> None:
    url = postgres.database()
    starts = [subprocess.Popen([str(BIN / "softprobe"), "store", "migrate", "--store", url, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in starts]
    assert [r["exitCode"] for r in results] == [0, 0, 0]
    assert sorted(r["fromVersion"] for r in results) == [0, postgres_schema.VERSION, postgres_schema.VERSION]
    with psycopg.connect(url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(postgres_schema.VERSION,)]


def test_softprobe_store_migrate_then_serve_the_database(postgres, capsys, monkeypatch) -> None:
    url = postgres.database()
    assert run(capsys, "store", "migrate", "--store", url)[1].strip() == (
        f"store {url}: migrated from schema version 0 to {postgres_schema.VERSION}")
    assert "already at schema version" in run(capsys, "store", "migrate", "--store", url)[1]
    with open_store(url) as store:
        store.ingest(traces(extract_span(session="listed")))
    monkeypatch.setenv("SOFTPROBE_STORE_URL", url)  # what the CLI's store commands read too
    code, out, _ = run(capsys, "sessions")
    assert code == 0 and "listed" in out


def test_a_database_not_migrated_is_said_how_to_migrate_when_read(postgres) -> None:
    url = postgres.database()
    with pytest.raises(StoreError, match=r"schema version 0, this softprobe needs \d+: run `softprobe store migrate"):
        Store(StoreConfig(url=url), read_only=True)


@pytest.mark.parametrize("read_only", [False, True])
def test_a_database_of_a_newer_version_is_refused_in_one_line(url: str, read_only: bool) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(StoreError) as e:
        Store(StoreConfig(url=url), read_only=read_only)
    assert str(e.value).startswith(f"store {url}: written by a newer softprobe (schema version "
                                   f"{postgres_schema.VERSION + 1}, this one knows {postgres_schema.VERSION})")
    assert "\n" not in str(e.value)


def test_errors_never_show_the_password(postgres, capsys) -> None:
    url = f"postgresql://softprobe:s3cret-pw@127.0.0.1:{postgres.port + 1}/nothing"
    code, out, err = run(capsys, "store", "migrate", "--store", url)
    assert code == 1 and "cannot migrate" in err and "s3cret" not in out + err
    assert err.count("\n") == 1


def test_store_urls_name_either_engine_and_a_wrong_one_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "by-url.db"
    code, out, _ = run(capsys, "store", "migrate", "--store", f"sqlite:{path}")
    assert code == 0 and out.strip().startswith(f"store {path}: migrated from schema version 0 to")
    with open_store(f"sqlite:{path}") as store:
        store.ingest(traces(extract_span(session="in-the-file")))
    assert "in-the-file" in run(capsys, "sessions", "--db", path)[1]
    code, _, err = run(capsys, "sessions", "--store", "mysql://u:pw@db/x")
    assert code == 2 and err == ("softprobe: --store: expected sqlite:PATH or postgresql://USER@HOST:PORT/DB, "
                                 "got mysql://...\n")
