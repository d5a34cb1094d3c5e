"""Two real `softprobe serve` replicas on one real PostgreSQL behind a real nginx round robin
(testkit.replicas), as k8s/overlays/postgres-backend runs them behind a Service: control sessions,
replay positions and closes are the same on either replica; a `kill -9` of one under export load
from a real gateway loses and duplicates nothing; a rolling restart of both during a replay run
fails no lookup."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from testkit.load import Load
from testkit.recording import FAST_EXPORT
from testkit.replicas import PROTOBUF, Replicas
from testkit.serve import KEY
from testkit.spans import answer_of, extract_span, inject, traces
from testkit.support import Gateway, echo_upstream, wait_for

PARTNER_RULE = {"id": "partner", "when": {"host": "partner.test"},
                "then": {"action": "mock", "response": {"status": 200, "body": "partner mocked"}}}


@pytest.fixture
def url(postgres) -> str:
    return postgres.database(migrated=True)


@pytest.fixture
def replicas(tmp_path: Path, url: str) -> Iterator[Replicas]:
    with Replicas(tmp_path, url) as running:
        yield running


def lookup(client, request: TracesData) -> tuple[int, str] | None:
    reply = client.post("/v1/inject", content=request.SerializeToString(), headers=PROTOBUF)
    assert reply.status_code in (200, 404), reply.text
    return answer_of(TracesData.FromString(reply.content)) if reply.status_code == 200 else None


def ingest(client, data: TracesData) -> None:
    reply = client.post("/v1/traces", content=data.SerializeToString(), headers=PROTOBUF)
    assert reply.status_code == 200, reply.text


def test_a_session_made_through_the_balancer_is_one_session_on_both_replicas(replicas: Replicas) -> None:
    a, b = replicas.backends
    sid = replicas.client.post("/v1/sessions", json={"mode": "replay"}).json()["sessionId"]
    assert [r.client.get(f"/v1/sessions/{sid}/state").status_code for r in (a, b)] == [200, 200]

    assert a.client.post(f"/v1/sessions/{sid}/rules", json={"rules": [PARTNER_RULE]}).status_code == 200
    changed = a.client.post(f"/v1/sessions/{sid}/policy", json={"externalHttp": "strict"}).json()
    state = b.client.get(f"/v1/sessions/{sid}/state").json()
    assert state["sessionRevision"] == changed["sessionRevision"]
    assert state["rules"] == {"rules": [PARTNER_RULE]} and state["policy"] == {"externalHttp": "strict"}
    # the rule a set answers on b
    assert lookup(b.client, inject(host="partner.test", path="/x", session=sid)) == (200, "partner mocked")

    assert b.client.post(f"/v1/sessions/{sid}/close").status_code == 200
    for client in (a.client, b.client, replicas.client, replicas.client):
        assert client.get(f"/v1/sessions/{sid}/state").status_code == 404
    assert sid not in {s["sessionId"] for s in a.client.get("/v1/sessions").json()["sessions"]}


def test_the_nth_identical_lookup_gets_the_nth_answer_whichever_replica_answers(replicas: Replicas) -> None:
    n = 8
    ingest(replicas.client, traces(*(extract_span(path="/counter", session="rec", answer=str(k))
                                     for k in range(1, n + 1))))
    # round robin: the balancer alternates the replicas
    through_lb = [lookup(replicas.client, inject(path="/counter", session="rec~run1")) for _ in range(n + 1)]
    assert [got[1] for got in through_lb] == [str(k) for k in range(1, n + 1)] + [str(n)]
    a, b = replicas.backends
    direct = [lookup((a, b)[k % 2].client, inject(path="/counter", session="rec~run2")) for k in range(n)]
    assert [got[1] for got in direct] == [str(k) for k in range(1, n + 1)]


def recorded(url: str) -> tuple[int, int, set[str]]:
    """(rows, distinct span ids, paths) of the exchanges the gateway's load recorded."""
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT trace_id || span_id, path FROM exchanges WHERE path LIKE '/load/%'").fetchall()
    return len(rows), len({r[0] for r in rows}), {r[1] for r in rows}


def test_kill_9_of_a_replica_under_export_load_records_every_exchange_once(
        replicas: Replicas, url: str, tmp_path: Path) -> None:
    config = {"sp_backend_url": replicas.lb.url, "public_key": KEY, "export": FAST_EXPORT}
    with echo_upstream() as upstream, Gateway(config, tmp_path) as gateway:
        load = Load(gateway.port, upstream.url, clients=2, pause_s=0.002, max_seconds=40).start()
        try:
            load.wait_answered(200)
            wait_for(lambda: recorded(url)[0] > 0)  # exports are reaching the replicas
            replicas.kill(0)
            at_kill = len(load.answered)
            load.wait_answered(at_kill + 300)
        finally:
            load.stop()
        sent = set(load.answered)
        wait_for(lambda: sent <= recorded(url)[2], 30)  # the gateway retried what the kill cut
    rows, spans, paths = recorded(url)
    print(f"\nkill -9 under export load: sent {len(sent)} (killed after {at_kill}), recorded {spans} span ids "
          f"in {rows} rows, lost {len(sent - paths)}, client failures {load.failed}")
    assert load.failed == load.other == 0
    assert rows == spans == len(paths)  # each exchange recorded once
    assert sent - paths == set()  # nothing lost


def test_a_rolling_restart_of_both_replicas_fails_no_lookup_of_a_replay_run(replicas: Replicas) -> None:
    paths = [f"/roll/{k}" for k in range(20)]
    ingest(replicas.client, traces(*(extract_span(path=p, session="roll", answer=p) for p in paths)))
    stop, results = threading.Event(), {"ok": 0, "failed": []}

    def replay() -> None:
        k = 0
        while not stop.is_set():
            path = paths[k % len(paths)]
            try:
                got = lookup(replicas.client, inject(path=path, session="roll~run"))
            except Exception as e:  # noqa: BLE001 (a failed lookup, counted)
                got = e
            if got == (200, path):
                results["ok"] += 1
            else:
                results["failed"].append(got)
            k += 1

    runner = threading.Thread(target=replay, daemon=True)
    runner.start()
    try:
        codes, marks = [], []
        for n in (0, 1):
            before = results["ok"]
            wait_for(lambda: results["ok"] >= before + 20)  # lookups on both before each step
            codes.append(replicas.restart(n))
            marks.append(results["ok"])
        wait_for(lambda: results["ok"] >= marks[-1] + 20)
    finally:
        stop.set()
        runner.join(30)
    print(f"\nrolling restart during a replay run: {results['ok']} lookups answered, "
          f"{len(results['failed'])} failed")
    assert codes == [0, 0]
    assert results["failed"] == []
