"""The store on both engines (a real SQLite file, a real PostgreSQL database: the fixture
`open_store` is parametrized over them): recording, replay matching, sequences, retention, errors.

The span builders here follow protocol section 1 (extract) and section 2 (inject); the other
backend tests import them.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store, StoreError

from testkit.spans import answer_of, answered, extract_span, inject, traces


def test_ingest_stores_extract_spans_only_and_once(open_store) -> None:
    store = open_store()
    span = extract_span()
    lookup_span = inject().resource_spans[0].scope_spans[0].spans[0]
    assert store.ingest(traces(span, lookup_span)) == 1
    assert store.ingest(traces(span)) == 0  # an export retry does not duplicate the exchange
    summary, exchanges = store.session("s1")
    assert summary.exchanges == 1 and summary.service == "checkout"
    ex = exchanges[0]
    assert (ex.method, ex.host, ex.path, ex.status, ex.direction) == ("GET", "api.test:80", "/items", 200, "outbound")
    assert ex.request_headers.get(":method") == "GET" and ex.response_headers.get("content-type") == "application/json"
    assert ex.trace_id == span.trace_id.hex() and ex.response_body == '{"ok":true}'


def test_lookup_answers_recorded_response_exactly(open_store) -> None:
    store = open_store()
    binary = "AAECAwQ="  # base64, as section 1 records a body with a binary content-type
    store.ingest(traces(extract_span(path="/img", answer=binary, answer_type="image/png", status=201)))
    result = store.lookup(inject(path="/img"))
    span = result.resource_spans[0].scope_spans[0].spans[0]
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert attrs["http.response.status_code"].int_value == 201
    assert attrs["http.response.body"].string_value == binary
    assert attrs["http.response.header.content-type"].string_value == "image/png"
    assert store.lookup(inject(path="/other")) is None


def test_json_body_matches_whatever_key_order_and_whitespace(open_store) -> None:
    store = open_store()
    store.ingest(traces(extract_span("POST", path="/pay", body='{"amount": 10, "card": {"n": 1, "cvc": 2}}',
                                     content_type="application/json", answer='{"paid":true}')))
    reordered = '{ "card":{"cvc":2,"n":1},\n  "amount":10 }'
    assert answer_of(store.lookup(inject("POST", path="/pay", body=reordered,
                                         content_type="application/json"))) == (200, '{"paid":true}')
    assert store.lookup(inject("POST", path="/pay", body='{"amount": 11, "card": {"n": 1, "cvc": 2}}',
                               content_type="application/json")) is None


def test_ignored_fields_do_not_affect_matching(open_store) -> None:
    store = open_store(ignore_fields=("requestId", "meta.ts"))
    store.ingest(traces(extract_span(
        "POST", path="/orders?requestId=r1&page=1", content_type="application/json",
        body='{"item": "a", "requestId": "r1", "meta": {"ts": 1, "v": 2}}', answer='"created"')))
    hit = inject("POST", path="/orders?page=1&requestId=r9", content_type="application/json",
                 body='{"item": "a", "requestId": "r9", "meta": {"ts": 99, "v": 2}}')
    assert answer_of(store.lookup(hit)) == (200, '"created"')
    # meta.v is not ignored; a dotted path ignores only that path
    miss = inject("POST", path="/orders?page=1", content_type="application/json",
                  body='{"item": "a", "meta": {"ts": 1, "v": 3}}')
    assert store.lookup(miss) is None


def test_query_order_does_not_matter_but_values_do(open_store) -> None:
    store = open_store()
    store.ingest(traces(extract_span(path="/search?q=shoes&page=2&sort=asc", answer='"page two"')))
    assert answer_of(store.lookup(inject(path="/search?sort=asc&page=2&q=shoes"))) == (200, '"page two"')
    assert store.lookup(inject(path="/search?sort=asc&page=3&q=shoes")) is None


def test_repeated_requests_replay_in_recorded_order_then_repeat_the_last(open_store) -> None:
    store = open_store()
    store.ingest(traces(*(extract_span(path="/counter", answer=str(n)) for n in (1, 2, 3))))
    answers = [answer_of(store.lookup(inject(path="/counter")))[1] for _ in range(5)]
    assert answers == ["1", "2", "3", "3", "3"]


def test_sequence_starts_over_after_the_session_was_idle(open_store) -> None:
    store = open_store(sequence_reset_s=0.05)
    store.ingest(traces(*(extract_span(path="/counter", answer=str(n)) for n in (1, 2))))
    assert [answer_of(store.lookup(inject(path="/counter")))[1] for _ in range(2)] == ["1", "2"]
    time.sleep(0.1)  # the idle time itself is what is under test
    assert answer_of(store.lookup(inject(path="/counter")))[1] == "1"


def test_exchanges_recorded_during_replay_do_not_join_its_sequence(open_store) -> None:
    store = open_store()
    store.ingest(traces(extract_span(path="/counter", answer="1"), extract_span(path="/counter", answer="2")))
    assert answer_of(store.lookup(inject(path="/counter")))[1] == "1"
    store.ingest(traces(extract_span(path="/counter", answer="replayed")))  # the gateway records the replay
    assert [answer_of(store.lookup(inject(path="/counter")))[1] for _ in range(2)] == ["2", "2"]


@pytest.mark.parametrize("scope, expected", [
    ("prefer", ["mine", "theirs"]),  # own session first, then any
    ("only", ["mine", None]),
    ("any", ["latest", "theirs"]),  # the latest recording, whoever's
])
def test_session_scope(open_store, scope: str, expected: list) -> None:
    store = open_store(session_scope=scope)
    store.ingest(traces(extract_span(path="/me", session="mine", answer="mine"),
                        extract_span(path="/me", session="other", answer="latest"),
                        extract_span(path="/only-theirs", session="other", answer="theirs")))
    got = [answer_of(store.lookup(inject(path=p, session="mine"))) for p in ("/me", "/only-theirs")]
    assert [a[1] if a else None for a in got] == expected


def test_fallback_session_stays_bound_for_the_lookup_session(open_store) -> None:
    store = open_store()
    store.ingest(traces(extract_span(path="/a", session="run1", answer="a1"),
                        extract_span(path="/b", session="run1", answer="b1"),
                        extract_span(path="/a", session="run2", answer="a2"),
                        extract_span(path="/b", session="run2", answer="b2")))
    # a new session falls back to the latest recording of /b (run2) and then stays with run2
    assert answer_of(store.lookup(inject(path="/b", session="new")))[1] == "b2"
    assert answer_of(store.lookup(inject(path="/a", session="new")))[1] == "a2"


def test_retention_deletes_the_oldest_exchanges_and_their_sessions(open_store) -> None:
    store = open_store(max_exchanges=3)
    first = extract_span(session="old", path="/1")
    store.ingest(traces(first, extract_span(session="old", path="/2")))
    store.ingest(traces(first))  # a retried batch neither duplicates nor shifts what is kept
    store.ingest(traces(*(extract_span(session="new", path=f"/{n}") for n in (3, 4))))
    assert store.session("old")[1][0].path == "/2" and store.session("old")[0].exchanges == 1
    store.ingest(traces(extract_span(session="new", path="/5")))
    assert store.session("old") == (None, [])
    assert [ex.path for ex in store.session("new")[1]] == ["/3", "/4", "/5"]
    assert [s.id for s in store.sessions().sessions] == ["new"]


def test_retention_by_age(open_store) -> None:
    with open_store() as store:
        store.ingest(traces(extract_span(session="aged")))
    open_store.execute("UPDATE exchanges SET ingested_ns = ingested_ns - 7200000000000")  # stored 2 h ago
    with open_store(max_age_hours=1) as store:
        assert store.session("aged") == (None, [])


def test_restart_keeps_exchanges_sessions_and_misses(open_store) -> None:
    with open_store() as store:
        store.ingest(traces(extract_span(session="kept", answer='"still here"')))
        assert store.lookup(inject(path="/nothing")) is None
    with open_store() as store:
        assert answer_of(store.lookup(inject(session="kept"))) == (200, '"still here"')
        assert [s.id for s in store.sessions().sessions] == ["kept"]
        assert store.misses()[0].path == "/nothing"


def test_changed_ignore_fields_apply_to_existing_recordings(open_store) -> None:
    with open_store() as store:
        store.ingest(traces(extract_span(path="/x?ts=1", answer='"x"')))
        assert store.lookup(inject(path="/x?ts=2")) is None
    with open_store(ignore_fields=("ts",)) as store:
        assert answer_of(store.lookup(inject(path="/x?ts=2"))) == (200, '"x"')


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"
    path.write_bytes(b"this is not a database, just some bytes that are long enough " * 50)
    with pytest.raises(StoreError, match=rf"{path}.*not a database") as e:
        Store(StoreConfig(path=str(path)))
    assert "\n" not in str(e.value)


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")  # works as root too, unlike permissions
    with pytest.raises(StoreError, match=r"a-file/sp.db: cannot create its directory"):
        Store(StoreConfig(path=str(tmp_path / "a-file" / "sp.db")))


def test_miss_records_the_closest_exchange_and_a_field_diff(open_store) -> None:
    store = open_store()
    store.ingest(traces(
        extract_span("POST", path="/pay?page=1", body='{"amount": 10, "currency": "EUR"}',
                     content_type="application/json"),
        extract_span("GET", path="/elsewhere")))
    assert store.lookup(inject("POST", path="/pay?page=2", body='{"currency": "EUR", "amount": 12}',
                               content_type="application/json")) is None
    miss = store.misses()[0]
    assert miss.closest.endswith("POST api.test:80/pay?page=1 in session s1")
    assert miss.diff == ("query.page: recorded '1', got '2'", "body.amount: recorded 10, got 12")


def test_concurrent_ingest_and_lookups(open_store) -> None:
    store = open_store()
    store.ingest(traces(extract_span(path="/hot", session="hot", answer='"hot"')))
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for n in range(40):
                store.ingest(traces(*(extract_span(path=f"/bulk/{n}/{i}", session=f"b{n}") for i in range(10))))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    def lookups() -> None:
        try:
            for _ in range(200):
                assert answer_of(store.lookup(inject(path="/hot", session="hot"))) == (200, '"hot"')
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ingest), *(threading.Thread(target=lookups) for _ in range(3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(s.exchanges for s in store.sessions(size=100).sessions) == 401


def test_lookup_latency_is_a_few_milliseconds(open_store) -> None:
    store = open_store()
    for batch in range(20):
        store.ingest(traces(*(extract_span("POST", path=f"/api/{batch}/{i}", session=f"s{batch}",
                                           body=json.dumps({"i": i, "pad": "x" * 200}),
                                           content_type="application/json") for i in range(250))))
    request = inject("POST", path="/api/7/123", session="s7", content_type="application/json",
                     body=json.dumps({"pad": "x" * 200, "i": 123}))
    started = time.perf_counter()
    for _ in range(200):
        assert store.lookup(request) is not None
    per_lookup_ms = (time.perf_counter() - started) / 200 * 1000
    print(f"lookup: {per_lookup_ms:.3f} ms over 5000 exchanges")
    assert per_lookup_ms < 5, per_lookup_ms


def test_replay_runs_are_listed_apart_from_recordings_and_never_make_a_prefix_ambiguous(open_store, caplog) -> None:
    store = open_store()
    store.ingest(traces(extract_span(session="quickstart", path="/a"), extract_span(session="quick~stale", path="/a"),
                        extract_span(session="other", path="/a")))
    store.ingest(traces(answered(extract_span(session="quickstart~1f2c21bf", path="/a"), "hit"),  # passed
                        answered(extract_span(session="quickstart~9e8d7c6b", path="/a"), "hit"),
                        answered(extract_span(session="quickstart~9e8d7c6b", path="/b", status=404), "refusal"),
                        answered(extract_span(session="other~0a0b0c0d", path="/a"), "mock")))
    assert store.lookup(inject(path="/zzz", session="other~0a0b0c0d")) is None  # a miss of that run
    # Said once, at its ingest: a run of a recording not held (a service's own id with a `~`?).
    said = [r.getMessage() for r in caplog.records if "kept as a replay run" in r.getMessage()]
    assert [line.split(" (a `~`")[0] for line in said] == [
        "softprobe: session 'quick~stale' is kept as a replay run of 'quick'"], said
    store.close()  # the miss is written with the next write, or at the close
    store = open_store()
    assert [s.id for s in store.sessions(runs=False).sessions] == ["other", "quickstart"]
    assert {s.id for s in store.sessions(runs=True).sessions} == {
        "quick~stale", "quickstart~1f2c21bf", "quickstart~9e8d7c6b", "other~0a0b0c0d"}
    assert len(store.sessions().sessions) == 6 and store.count_runs() == 4  # the read API lists them all
    runs = {run.id: run for run in store.runs()}
    assert [(r.recorded, r.answered, r.refused, r.misses, r.passed) for r in (
        runs["quickstart~1f2c21bf"], runs["quickstart~9e8d7c6b"], runs["other~0a0b0c0d"])] == [
        ("quickstart", 1, 0, 0, True), ("quickstart", 1, 1, 0, False), ("other", 1, 0, 1, False)]
    assert [r.id for r in store.runs("quickstart")] == ["quickstart~9e8d7c6b", "quickstart~1f2c21bf"]  # newest first
    # `quick` starts a recording and three runs: the recording; with a `~`, the runs again
    assert store.find("quick") == [("session", "quickstart")]
    assert store.find("quickstart~") == [("session", "quickstart~1f2c21bf"), ("session", "quickstart~9e8d7c6b")]
    assert store.find("quick~") == [("session", "quick~stale")]
    assert store.find("other~0a") == [("session", "other~0a0b0c0d")]


def test_a_miss_names_the_closest_exchange_by_its_id_also_from_before(open_store) -> None:
    store = open_store()
    store.ingest(traces(extract_span(path="/price?sku=a", session="recorded")))
    assert store.lookup(inject(path="/price?sku=b", session="replay")) is None
    store.close()
    span_id = open_store().session("recorded")[1][0].span_id
    stores = open_store
    stores.execute("INSERT INTO misses (at_ns, session_id, method, host, path, closest, diff) "
                   "VALUES (1, 'old', 'GET', 'api.test:80', '/x', '#1 GET api.test:80/price?sku=a in session recorded', '[]')")
    stores.execute("INSERT INTO misses (at_ns, session_id, method, host, path, closest, diff) "
                   "VALUES (2, 'gone', 'GET', 'api.test:80', '/x', '#99 GET api.test:80/gone in session gone', '[]')")
    gone, old, new = open_store().misses()
    assert (new.closest, new.closest_exchange) == ("GET api.test:80/price?sku=a in session recorded", span_id)
    assert (old.closest, old.closest_exchange) == (new.closest, span_id)  # a row written as `#ROW ...` before
    assert (gone.closest, gone.closest_exchange) == ("GET api.test:80/gone in session gone", "")


def test_listing_a_page_at_a_time_finding_by_prefix_and_counting_stored_spans(open_store) -> None:
    store = open_store()
    recorded = [extract_span(session=name, path=f"/{name}") for name in ("b%_1", "b%_2", "a", "Z", "b\u00e9")]
    store.ingest(traces(*recorded))
    first = store.sessions(size=2, service="checkout")
    second = store.sessions(size=2, cursor=first.next_cursor)
    third = store.sessions(size=2, cursor=second.next_cursor)
    listed = [s.id for page in (first, second, third) for s in page.sessions]
    assert listed == ["b\u00e9", "Z", "a", "b%_2", "b%_1"] and third.next_cursor == ""  # newest first
    assert store.find("b%") == [("session", "b%_1"), ("session", "b%_2")]  # % and _ are no wildcards
    assert store.find("b%_1") == [("session", "b%_1")]
    span_id = recorded[2].span_id.hex()
    assert ("exchange", span_id) in store.find(span_id[:14])
    assert store.exchange(span_id).session_id == "a"
    keys = [(s.trace_id.hex(), s.span_id.hex()) for s in recorded[:3]]
    assert store.count_stored([*keys, ("00" * 16, "00" * 8)]) == 3
    with pytest.raises(ValueError, match="invalid cursor"):
        store.sessions(cursor="not-a-cursor")
