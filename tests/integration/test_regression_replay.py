"""`softprobe replay`: the comparison as pure functions, then the travel demo end to end, running
the walkthrough of docs/cases-and-regression-replay.md as written."""

from __future__ import annotations

import base64
import itertools
import json
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
from softprobe_gateway.cli.main import main
from softprobe_gateway.cli.replay import Checks, compare, request_to_send
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.formats.casefile import case_document
from softprobe_gateway.store.model import Fields, Recording
from softprobe_gateway.store.store import Store

from testkit.recording import recorded_count
from testkit.support import LOOPBACK, ROOT, Gateway, HttpServer, Received, Reply, wait_for

PROPAGATED = ("x-softprobe-session-id", "x-sp-session-id", "traceparent", "tracestate")


def recorded(body: str, content_type: str = "application/json", status: int = 200, **headers: str) -> Recording:
    return Recording(
        session_id="s-1", trace_id="ab" * 16, span_id="cd" * 8, parent_span_id="", service="front",
        direction="inbound", kind="server", method="POST", host="front:8080", path="/book?x=1", status=status,
        error=False, start_ns=1, end_ns=2,
        request_headers=Fields({":method": "POST", ":path": "/book?x=1", "host": "front:8080", "content-type": content_type,
                                "content-length": "2", "x-sp-session-id": "old", "tracestate": "x-sp-session-id=old,k=v",
                                "accept": "*/*", "via": "1.1 softprobe-0123abcd"}.items()),
        response_headers=Fields({"content-type": content_type, **headers}.items()), request_body="{}", response_body=body)


def test_json_bodies_compare_structurally_minus_ignored_paths() -> None:
    ex = recorded('{"id": 1, "at": "10:00", "items": [{"sku": "a", "ts": 1}], "meta": {"at": "x"}}')
    same = b'{"meta": {"at": "x"}, "items": [{"ts": 1, "sku": "a"}], "at": "10:00", "id": 1}'
    assert compare(ex, 200, {"content-type": "application/json"}, same, Checks()) == []
    changed = b'{"id": 2, "at": "11:00", "items": [{"sku": "a", "ts": 2}], "meta": {"at": "y"}}'
    assert compare(ex, 200, {"content-type": "application/json"}, changed, Checks()) == [
        "body.at: recorded '10:00', got '11:00'", "body.id: recorded 1, got 2",
        "body.items[0].ts: recorded 1, got 2", "body.meta.at: recorded 'x', got 'y'"]
    rooted = Checks.parse(None, ["$.at", "$.items[*].ts"])  # from the root only, through lists
    assert compare(ex, 200, {"content-type": "application/json"}, changed, rooted) == [
        "body.id: recorded 1, got 2", "body.meta.at: recorded 'x', got 'y'"]
    anywhere = Checks.parse(None, ["at", "ts", "id"])  # a bare name, at any depth
    assert compare(ex, 200, {"content-type": "application/json"}, changed, anywhere) == []
    removed = b'{"id": 1, "items": [{"sku": "a", "ts": 1}], "meta": {"at": "x"}, "new": true}'
    assert compare(ex, 200, {"content-type": "application/json"}, removed, Checks()) == [
        "body.at: recorded '10:00', missing", "body.new: not recorded, got true"]


def test_status_headers_text_and_binary_compare_exactly() -> None:
    ex = recorded("one\ntwo\nthree", "text/plain", 201, etag='"v1"')
    checks = Checks.parse(["Content-Type", "etag"], [])
    lines = compare(ex, 500, {"content-type": "text/html", "etag": '"v1"'}, b"one\n2\nthree", checks)
    assert lines[:3] == ["status: recorded 201, got 500", "header content-type: recorded 'text/plain', got 'text/html'",
                         "body: text differs"]
    assert "  -two" in lines and "  +2" in lines
    assert compare(ex, 201, {"content-type": "text/plain"}, b"one\ntwo\nthree", checks) == [
        "header etag: recorded '\"v1\"', missing"]
    png = bytes(range(256))
    binary = recorded(base64.b64encode(png).decode(), "image/png")
    assert compare(binary, 200, {"content-type": "image/png"}, png, Checks()) == []
    assert compare(binary, 200, {"content-type": "image/png"}, png[:-1] + b"\xfe", Checks())[0].startswith(
        "body: recorded 256 bytes (sha256 ")
    assert compare(ex, 201, {"content-type": "text/plain"}, b"one\ntwo\nthree\n", checks)[1].startswith(
        "body: recorded 13 bytes (sha256 ")  # a final newline more: no line differs, the bytes do
    # a recorded JSON answer that the new version sends as something else is compared exactly
    assert compare(recorded('{"a": 1}'), 200, {"content-type": "application/json"}, b"oops", Checks()) == [
        "body: text differs", "  --- recorded", "  +++ got", "  @@ -1 +1 @@", '  -{"a": 1}', "  +oops"]


def test_the_request_sent_again_is_in_the_replay_session() -> None:
    headers, body = request_to_send(recorded("{}"), "s-1", "x-softprobe-session-id", {"authorization": "Bearer t"})
    assert headers == [("content-type", "application/json"), ("accept", "*/*"), ("x-softprobe-session-id", "s-1"),
                       ("tracestate", "x-sp-session-id=s-1"), ("authorization", "Bearer t")]  # no via: no loop
    assert body == b"{}"


# -- the travel demo, as the docs' walkthrough runs it ---------------------------------------


def walkthrough() -> str:
    section = (ROOT / "docs" / "cases-and-regression-replay.md").read_text().split("<!-- replay:start -->", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_readme_walkthrough_records_and_replays_the_travel_demo(tmp_path: Path) -> None:
    work = tmp_path / "travel"
    # Every command that fails says so on stderr (the walkthrough's step 3 must, with status 1).
    script = "trap 'echo \"exit status $? from: $BASH_COMMAND\" >&2' ERR\n" + walkthrough().replace(
        "/tmp/travel", str(work))
    run = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=150)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    failed = re.findall(r"^exit status (\d+) from: (.*)$", run.stderr, re.MULTILINE)
    assert [(status, "front_v2.py" in command) for status, command in failed] == [("1", True)], run.stderr
    session = json.loads((work / "demo.json").read_text())["session"]

    summaries = re.findall(r"^replay: .*$", out, re.MULTILINE)
    assert len(summaries) == 3, out
    unchanged, changed, from_case = summaries
    assert "3 exchanges in 1 case: 3 passed, 0 differed, 0 failed to run, in " in unchanged
    assert from_case.startswith("replay: 3 exchanges in 1 case: 3 passed, 0 differed")
    assert "2 passed, 1 differed" in changed
    for line in ("body.cheapest.price: recorded 289, got 299", "body.cheapest.departs: recorded '13:40', missing",
                 "body.flights[1].price: recorded 329, got 339"):
        assert f"\n          {line}\n" in out, out

    report = ET.parse(work / "junit.xml").getroot()
    assert (report.get("tests"), report.get("failures"), report.get("errors")) == ("3", "1", "0")
    failures = [(case.get("classname"), case.get("name"), case.find("failure").get("message"))
                for case in report.iter("testcase") if case.find("failure") is not None]
    assert failures == [(session, "1 GET /search?from=SFO&to=JFK", "body.cheapest.departs: recorded '13:40', missing")]
    # Each replay ran in a session of its own (SESSION~RUN), where the strict gateway's answers
    # went, as its own: the recorded session, and the case, hold the recording alone.
    case = json.loads((work / "travel.case.json").read_text())
    assert case["caseId"] == session and len(case["traces"]) == 3
    assert re.search(r"travel\.case\.json: case \S+, 6 exchanges in 3 traces\n", out), out
    runs = re.findall(rf"^replaying {session}: 3 inbound exchanges against \S+ in session ({session}~\w+)$",
                      out, re.MULTILINE)
    assert len(set(runs)) == 2, out
    with Store(StoreConfig(path=str(work / "softprobe.db")), read_only=True) as store:
        assert [ex.answered_by for run in runs for ex in store.session(run)[1]] == ["hit"] * 6

    # Without the ignored path, the timestamp is the one difference of the unchanged version; and
    # the airline itself is never contacted (its recorded address is watched throughout).
    airline = json.loads((work / "demo.json").read_text())["airline_url"].rsplit(":", 1)[1]
    with socket.socket() as watch:
        watch.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the demo left it in TIME_WAIT
        watch.bind((LOOPBACK, int(airline)))
        watch.listen()
        watch.setblocking(False)
        plain = subprocess.run([sys.executable, str(ROOT / "examples" / "travel" / "replay_demo.py"),
                                "--workdir", str(work)], capture_output=True, text=True, timeout=60)
        try:
            watch.accept()
            contacted = True
        except BlockingIOError:
            contacted = False
    assert plain.returncode == 1 and not contacted
    differences = re.findall(r"^ {10}(\S.*)$", plain.stdout, re.MULTILINE)
    assert [d.split(":", 1)[0] for d in differences] == ["body.searched_at"], plain.stdout
    assert "2 passed, 1 differed" in plain.stdout


# -- two runs in a row against one strict gateway ------------------------------------------------


def counting_front(counter: HttpServer, egress: list[str]) -> HttpServer:
    """A service whose every answer holds two identical calls to `counter` (through the proxy
    `egress[0]`), passing the session on as the travel demo's front does."""
    def reply(got: Received) -> Reply:
        headers = {k: v for k, v in got.headers.items() if k in PROPAGATED}
        with httpx.Client(proxy=egress[0], trust_env=False, timeout=10) as client:
            calls = [client.get(f"{counter.url}/next", headers=headers).text for _ in range(2)]
        return 200, {"content-type": "application/json"}, json.dumps({"calls": calls}).encode()
    return HttpServer(reply)


def test_two_runs_in_a_row_against_one_strict_gateway_each_walk_the_recording(tmp_path: Path, capsys) -> None:
    """A repeated identical call answered differently each time (a counter) replays right in
    both runs: each run is a session of its own (`counter-1~RUN`) answered from `counter-1`."""
    db, count = tmp_path / "sp.db", itertools.count(1)
    record = {"store": {"path": str(db)}, "export": {"flush_interval_ms": 20}}
    with HttpServer(lambda got: (200, {"content-type": "application/json"},
                                 json.dumps({"n": next(count)}).encode())) as counter:
        egress: list[str] = []
        with counting_front(counter, egress) as front:
            with Gateway(record, tmp_path) as outbound, \
                    Gateway(record, tmp_path, mode=f"reverse:{front.url}") as inbound:
                egress.append(outbound.proxy)
                # counter-2, recorded later, holds the same requests: each run must replay counter-1's.
                answers = [httpx.get(f"{inbound.proxy}/count", headers={"x-softprobe-session-id": session},
                                     trust_env=False).json()["calls"] for session in ["counter-1"] * 2 + ["counter-2"]]
                assert answers == [['{"n": 1}', '{"n": 2}'], ['{"n": 3}', '{"n": 4}'], ['{"n": 5}', '{"n": 6}']]
                wait_for(lambda: recorded_count(db) == 9)
            strict = {"store": {"path": str(db)}, "export": {"flush_interval_ms": 20}, "enable_inject": True,
                      "lookup": {"on_miss": "reject", "timeout_ms": 2000}}
            with Gateway(strict, tmp_path) as gateway:
                egress[0] = gateway.proxy
                replay = ["replay", "counter-1", "--db", str(db), "--target", front.url]
                for _ in range(2):
                    assert main(replay) == 0, capsys.readouterr().out
                    assert "replay: 2 exchanges in 1 case: 2 passed, 0 differed" in capsys.readouterr().out
                # The recorded id itself: a first run passes, the next one continues the walk.
                assert main([*replay, "--no-run-id"]) == 0
                assert main([*replay, "--no-run-id"]) == 1
                out = capsys.readouterr().out
                assert "body.calls[0]: recorded '{\"n\": 1}', got '{\"n\": 4}'" in out, out
        assert next(count) == 7  # the counter was never called again
    # What the strict gateway answered went into each run's session, marked as its own answers.
    with Store(StoreConfig(path=str(db)), read_only=True) as store:
        runs = wait_for(lambda: [s for s in store.sessions(size=10).sessions
                                 if s.id.startswith("counter-1~") and s.exchanges == 4], timeout=10)
        assert len(runs) == 2
        assert [ex.answered_by for run in runs for ex in store.session(run.id)[1]] == ["hit"] * 8
        # the recording, and the answers to the two runs that sent its id as it is
        assert Counter(ex.answered_by for ex in store.session("counter-1")[1]) == {"": 6, "hit": 8}
    # `softprobe sessions` lists the recordings, `softprobe runs` the two runs, each passed
    assert main(["sessions", "--db", str(db)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in listed[1:-1]) == ["counter-1", "counter-2"], listed
    assert listed[-1] == "(2 replay runs are not listed here: softprobe runs [SESSION])"
    assert main(["runs", "counter-1", "--db", str(db)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(r.id for r in runs) and [r[-5:] for r in rows] == [
        ["4", "0", "0", "0", "pass"]] * 2, rows


def test_an_unreachable_target_fails_every_exchange_and_junit_says_so(tmp_path: Path, capsys) -> None:
    case = tmp_path / "book.case.json"
    case.write_text(json.dumps(case_document("book", [recorded("{}"), recorded("{}")], datetime.now(timezone.utc))))
    with socket.socket() as closed:
        closed.bind((LOOPBACK, 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        code = main(["replay", str(case), "--target", f"http://{LOOPBACK}:{port}", "--junit", str(tmp_path / "j.xml"),
                     "--db", str(tmp_path / "unused.db")])
    out = capsys.readouterr().out
    assert code == 1 and out.count("  ERROR 1 POST /book?x=1") == 1 and "0 passed, 0 differed, 2 failed to run" in out
    report = ET.parse(tmp_path / "j.xml").getroot()
    assert (report.get("tests"), report.get("errors")) == ("2", "2")
    assert [c.get("classname") for c in report.iter("testcase")] == [str(case)] * 2


def test_a_session_replayed_through_the_gateway_that_recorded_it_is_not_refused_as_a_loop(
        tmp_path: Path, capsys) -> None:
    """The recording holds the client's headers, not the gateway's own `via`, and `softprobe
    replay` sends no `via`: a replay through the same inbound gateway reaches the service (it was
    refused with 508 as a loop)."""
    db = tmp_path / "sp.db"
    record = {"store": {"path": str(db)}, "export": {"flush_interval_ms": 20}}
    with HttpServer(lambda got: (200, {"content-type": "application/json"}, b'{"ok": true}')) as service, \
            Gateway(record, tmp_path, mode=f"reverse:{service.url}") as inbound:
        answer = httpx.get(f"{inbound.proxy}/orders", headers={"x-softprobe-session-id": "loop-1"}, trust_env=False)
        assert answer.status_code == 200
        wait_for(lambda: recorded_count(db) == 1)
        with Store(StoreConfig(path=str(db)), read_only=True) as store:
            recorded_headers = store.session("loop-1")[1][0].request_headers
        assert recorded_headers.get("via") is None and recorded_headers.get("x-softprobe-session-id") == "loop-1"
        assert main(["replay", "loop-1", "--db", str(db), "--target", inbound.proxy]) == 0, capsys.readouterr().out
        assert "1 passed, 0 differed" in capsys.readouterr().out
        assert len(service.received) == 2  # the recording and the replay both reached the service
