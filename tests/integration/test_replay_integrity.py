"""What the gateway answered itself (lookup hit, mock, strict refusal) is exported and shown, marked,
but never taken for a recording: it answers no lookup and is never the closest recording of a miss."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from softprobe_gateway.cli.replay import _suites
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

from testkit.cli import run
from testkit.recording import config
from testkit.spans import answer_of, answered, extract_span, inject, traces
from testkit.support import Gateway, wait_for


def test_gateway_answers_are_stored_but_never_answer_a_lookup(open_store) -> None:
    store = open_store()
    old_gateway_hit = extract_span(path="/old", answer="replayed by an earlier gateway")
    old_gateway_hit.attributes.append(KeyValue(key="sp.injected", value=AnyValue(bool_value=True)))
    store.ingest(traces(answered(extract_span(path="/refused", status=404, answer="no recorded answer"), "refusal"),
                        answered(extract_span(path="/mocked", answer="mocked"), "mock"), old_gateway_hit))
    assert [store.lookup(inject(path=p)) for p in ("/refused", "/mocked", "/old")] == [None] * 3
    summary, exchanges = store.session("s1")
    assert summary.exchanges == 3
    assert sorted(ex.answered_by for ex in exchanges) == ["injected", "mock", "refusal"]


def test_a_newer_replayed_copy_never_shadows_the_recording(open_store) -> None:
    store = open_store()
    store.ingest(traces(extract_span(path="/price?sku=a", session="recorded", answer="original")))
    store.ingest(traces(answered(extract_span(path="/price?sku=a", session="replay-1", answer="copy"), "hit")))
    # a new lookup session falls back to the latest recording of the request: the original
    assert answer_of(store.lookup(inject(path="/price?sku=a", session="replay-2"))) == (200, "original")
    assert store.lookup(inject(path="/price?sku=zzz", session="replay-2")) is None
    miss = store.misses()[0]
    assert miss.closest == "GET api.test:80/price?sku=a in session recorded"
    assert miss.closest_exchange == store.session("recorded")[1][0].span_id
    assert miss.diff == ("query.sku: recorded 'a', got 'zzz'",)


def test_show_and_har_mark_gateway_answers(tmp_path: Path, capsys) -> None:
    db = tmp_path / "sp.db"
    with Store(StoreConfig(path=str(db))) as store:
        store.ingest(traces(extract_span(path="/recorded", session="s"),
                            answered(extract_span(path="/hit", session="s"), "hit"),
                            answered(extract_span(path="/nope", session="s", status=404), "refusal")))
    code, out, _ = run(capsys, "show", "s", "--db", str(db))
    steps = [line for line in out.splitlines() if "->" in line]
    assert code == 0 and "answered by the gateway" not in steps[0]
    assert steps[1].endswith("[answered by the gateway: hit]")
    assert steps[2].endswith("[answered by the gateway: refusal]")
    code, out, _ = run(capsys, "har", "export", "s", "--db", str(db))
    entries = json.loads(out)["log"]["entries"]
    assert [e.get("_answeredBy") for e in entries] == [None, "hit", "refusal"]
    assert "answered by the gateway (hit)" in entries[1]["comment"]


def test_a_store_from_before_the_marking_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with Store(StoreConfig(path=str(db))) as store:
        store.ingest(traces(extract_span(path="/kept", answer="kept")))
    with sqlite3.connect(db) as con:
        con.execute("ALTER TABLE exchanges DROP COLUMN answered_by")
        con.execute("PRAGMA user_version = 1")  # as every store before versioned migrations
    with Store(StoreConfig(path=str(db))) as store:
        assert answer_of(store.lookup(inject(path="/kept"))) == (200, "kept")
        store.ingest(traces(answered(extract_span(path="/later"), "mock")))
        assert store.lookup(inject(path="/later")) is None


def test_strict_refusal_is_never_replayed_to_a_later_pass_through_replay(tmp_path: Path, recording) -> None:
    """Record, strict-replay an unrecorded request (refused), then replay again passing misses
    through: the request reaches the upstream instead of getting the old refusal."""
    db, upstream, original = recording
    with Gateway(config(db, enable_inject=True, lookup={"on_miss": "reject"}), tmp_path) as gw, \
            gw.client(headers={"x-sp-session-id": "shop-1"}) as client:
        hit = client.get(f"{upstream.url}/price?sku=a&currency=EUR")
        refused = client.get(f"{upstream.url}/price?sku=new&currency=EUR")
        assert (hit.status_code, hit.text) == original[0] and refused.status_code == 404
        marks = wait_for(lambda: len(m := _answered_by(db)) == 8 and m)
    assert marks[-2:] == ["hit", "refusal"] and set(marks[:6]) == {""}
    calls = len(upstream.received)
    with Gateway(config(db, enable_inject=True), tmp_path) as gw, \
            gw.client(headers={"x-sp-session-id": "shop-1"}) as client:
        forwarded = client.get(f"{upstream.url}/price?sku=new&currency=EUR")
    assert forwarded.status_code == 200 and forwarded.text.startswith("price #")
    assert len(upstream.received) == calls + 1


def _answered_by(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return [row[0] for row in con.execute("SELECT answered_by FROM exchanges ORDER BY id")]


def test_case_files_and_regression_replay_leave_out_gateway_answers(tmp_path: Path, capsys) -> None:
    db, again, case = tmp_path / "sp.db", tmp_path / "again.db", tmp_path / "s.case.json"
    inbound = [extract_span(path="/recorded", session="s"), answered(extract_span(path="/mocked", session="s"), "mock")]
    for span in inbound:
        next(kv for kv in span.attributes if kv.key == "sp.traffic.direction").value.string_value = "inbound"
    with Store(StoreConfig(path=str(db))) as store:
        store.ingest(traces(*inbound))
    # Left out of the case: Softprobe's own tools would take any answer in it for a recording.
    code, out, _ = run(capsys, "case", "export", "s", "--db", str(db), "-o", str(case))
    assert code == 0 and "(1 answered by the gateway left out)" in out
    assert run(capsys, "case", "import", str(case), "--db", str(again))[0] == 0
    with Store(StoreConfig(path=str(again))) as store:
        assert [ex.path for ex in store.session("s")[1]] == ["/recorded"]
        assert store.lookup(inject(path="/mocked", session="s")) is None
    suites = list(_suites([str(case)], StoreConfig(path=str(again)), None))
    assert [ex.path for suite in suites for ex in suite.exchanges] == ["/recorded"]


JSON = {"content-type": "application/json"}


def test_an_answer_from_mitmproxys_server_playback_is_marked_never_a_recording(tmp_path: Path, upstream) -> None:
    """mitmproxy's own server playback beside the gateway answers from a flow file: the exchange
    is stored, marked `addon`, with its request body, and never answers a lookup."""
    flows, db = tmp_path / "flows.mitm", tmp_path / "sp.db"
    with Gateway(config(tmp_path / "first.db"), tmp_path, options={"save_stream_file": str(flows)}) as gw, \
            gw.client() as client:
        recorded = client.post(f"{upstream.url}/json", content=b'{"q": 1}', headers=JSON)
        assert gw.stop() == 0
    calls = len(upstream.received)
    with Gateway(config(db), tmp_path, options={"server_replay": str(flows)}) as gw, \
            gw.client(headers={"x-sp-session-id": "played"}) as client:
        played = client.post(f"{upstream.url}/json", content=b'{"q": 1}', headers=JSON)
        assert (played.status_code, played.text) == (recorded.status_code, recorded.text)
        assert len(upstream.received) == calls  # answered by the playback, not the upstream
        wait_for(lambda: _answered_by(db) == ["addon"])
    lookup = inject(method="POST", host=exchange_host(upstream.url), path="/json", body='{"q": 1}',
                    session="played", content_type="application/json")
    with Store(StoreConfig(path=str(db))) as store:
        (exchange,) = store.session("played")[1]
        assert exchange.request_body == '{"q": 1}'
        assert store.lookup(lookup) is None
    with sqlite3.connect(db) as con:  # the same exchange unmarked would have answered it
        con.execute("UPDATE exchanges SET answered_by = ''")
    with Store(StoreConfig(path=str(db))) as store:
        assert answer_of(store.lookup(lookup)) == (recorded.status_code, recorded.text)


def exchange_host(url: str) -> str:
    return url.split("://", 1)[1]
