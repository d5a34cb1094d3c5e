"""`softprobe har export` then `har import`: a session recorded by real gateways, inbound and
outbound, comes back as it was recorded (our `_softprobe` marker read back); a HAR written by
mitmproxy's own SaveHar addon (`mitmdump --set hardump=...`) has no marker and imports as
before: inbound, of each request's host."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.formats.har import har_session
from softprobe_gateway.store.model import Recording
from softprobe_gateway.store.store import Store

from testkit.cli import run
from testkit.recording import FAST_EXPORT
from testkit.support import BIN, LOOPBACK, Gateway, echo_upstream, free_port, start_server, stop_server

SESSION = "both-ways"


def exchanges(db: Path, session: str) -> list[Recording]:
    with Store(StoreConfig(path=str(db)), read_only=True) as store:
        return store.session(session)[1]


def as_recorded(ex: Recording) -> tuple:
    return (ex.direction, ex.kind, ex.service, ex.session_id, ex.trace_id, ex.span_id, ex.parent_span_id,
            ex.start_ns, ex.end_ns, ex.answered_by, ex.method, ex.host, ex.path, ex.status,
            ex.error, ex.error_message, ex.response_body, ex.response_original_size)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """One session through two real gateways on one store: inbound through a reverse proxy,
    outbound (an upstream's answer, a mock, a body cut at 64 bytes, an upstream that is down)
    through a forward one."""
    tmp = tmp_path_factory.mktemp("har-round-trip")
    db = tmp / "recorded.db"
    config = {"store": {"path": str(db)}, "export": FAST_EXPORT, "capture": {"max_body_bytes": 64},
              "mocks": [{"path": "^/mocked$", "body": "hello from a mock"}]}
    session = {"x-sp-session-id": SESSION}
    with echo_upstream() as upstream:
        with Gateway(config, tmp, mode=f"reverse:{upstream.url}") as inbound, inbound.client() as client:
            assert client.get("/json", headers=session).status_code == 200
        with Gateway(config, tmp) as outbound, outbound.client() as client:
            assert client.get(f"{upstream.url}/json", headers=session).status_code == 200
            assert client.get(f"{upstream.url}/big/100", headers=session).status_code == 200
            assert client.get(f"{upstream.url}/mocked", headers=session).text == "hello from a mock"
            assert client.get(f"http://{LOOPBACK}:{free_port()}/down", headers=session).status_code == 502
    return db


def test_a_round_trip_keeps_each_exchange_as_recorded(recorded: Path, tmp_path: Path, capsys) -> None:
    original = exchanges(recorded, SESSION)
    assert sorted(ex.direction for ex in original) == ["inbound", *["outbound"] * 4]
    assert {ex.answered_by for ex in original} == {"", "mock"}
    assert [ex.error_message for ex in original if ex.error]  # the upstream that was down
    assert any(ex.response_original_size for ex in original)  # the body cut at 64 bytes
    har = tmp_path / "both.har"
    assert run(capsys, "har", "export", SESSION, "--db", recorded, "-o", har)[0] == 0

    fresh = tmp_path / "fresh.db"
    code, out, _ = run(capsys, "har", "import", har, "--db", fresh)
    assert code == 0 and f"5 exchanges imported into {fresh} as session {SESSION}" in out, out
    assert [as_recorded(ex) for ex in exchanges(fresh, SESSION)] == [as_recorded(ex) for ex in original]
    code, out, _ = run(capsys, "har", "import", har, "--db", fresh)
    assert "0 exchanges imported" in out  # the recorded ids: a second import stores nothing twice

    # As another session, even into the store it came from: new ids, the same directions.
    code, out, _ = run(capsys, "har", "import", har, "--db", recorded, "--session", "copy")
    assert code == 0 and "5 exchanges imported" in out, out
    copy = exchanges(recorded, "copy")
    assert [ex.direction for ex in copy] == [ex.direction for ex in original]
    assert not {ex.span_id for ex in copy} & {ex.span_id for ex in original}

    # An explicit flag still wins over the marker.
    run(capsys, "har", "import", har, "--db", fresh, "--session", "forced", "--direction", "inbound",
        "--service", "shop")
    assert {(ex.direction, ex.service) for ex in exchanges(fresh, "forced")} == {("inbound", "shop")}


def test_a_bad_marker_is_one_line_naming_the_entry(recorded: Path, tmp_path: Path, capsys) -> None:
    har = tmp_path / "both.har"
    run(capsys, "har", "export", SESSION, "--db", recorded, "-o", har)
    document = json.loads(har.read_text())
    document["log"]["entries"][1]["_softprobe"]["direction"] = "sideways"
    har.write_text(json.dumps(document))
    code, _, err = run(capsys, "har", "import", har, "--db", tmp_path / "x.db")
    assert (code, err.strip()) == (5, f"softprobe: {har}: log.entries[1]: ValueError: "
                                      "_softprobe.direction: expected inbound or outbound, not 'sideways'")


def test_mitmproxys_own_har_imports_as_inbound(tmp_path: Path, capsys) -> None:
    """mitmproxy's SaveHar addon, in a real mitmdump without ours: no marker, today's default."""
    har, port = tmp_path / "mitmproxy.har", free_port()
    with echo_upstream() as upstream:
        process, log = start_server([str(BIN / "mitmdump"), "--listen-host", LOOPBACK, "--listen-port", str(port),
                                     "--set", f"hardump={har}", "--set", f"confdir={tmp_path / 'mitmproxy'}"],
                                    port, tmp_path / "mitmdump.log", tmp_path)
        try:
            with httpx.Client(proxy=f"http://{LOOPBACK}:{port}", trust_env=False) as client:
                assert client.get(f"{upstream.url}/json").status_code == 200
                assert client.post(f"{upstream.url}/json", json={"a": 1}).status_code == 200
        finally:
            assert stop_server(process, log) == 0  # SaveHar writes the file as mitmdump shuts down
    document = json.loads(har.read_text())
    assert document["log"]["creator"]["name"] == "mitmproxy"
    assert len(document["log"]["entries"]) == 2 and not any("_softprobe" in e for e in document["log"]["entries"])

    db = tmp_path / "har.db"
    code, out, _ = run(capsys, "har", "import", har, "--db", db)
    assert code == 0 and "2 exchanges imported" in out, out
    session = out.split(" as session ", 1)[1].split()[0]
    assert session.startswith("har-")
    assert [(ex.direction, ex.service, ex.method, ex.path) for ex in exchanges(db, session)] == [
        ("inbound", LOOPBACK, "GET", "/json"), ("inbound", LOOPBACK, "POST", "/json")]


@pytest.mark.parametrize("document", [
    {"log": []}, {"log": {"entries": {}}}, [], {"log": {"entries": [{"_softprobe": {"sessionId": ["s"]}}]}},
    {"log": {"entries": [{"_softprobe": {"sessionId": "a"}}, {"_softprobe": {"sessionId": "b"}}]}},
])
def test_a_file_whose_markers_name_no_one_session_has_none(document):
    """Hostile or mixed markers: no session to import into by default, and never a traceback."""
    assert har_session(document) is None
