"""`softprobe` on what a real gateway recorded: id prefixes, failure reasons, truncated bodies,
a mock's text body, bad paths, `--limit 0`, `--version`, and what the gateway did not record."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from softprobe_gateway import __version__
from softprobe_gateway.cli.main import main

from testkit.cli import run
from testkit.recording import FAST_EXPORT
from testkit.support import BIN, LOOPBACK, Gateway, free_port, wait_for


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A store recorded through a real gateway: sessions demo-a and demo-b, with a truncated
    body, a failed exchange and a mock answered without a content-type."""
    from testkit.support import echo_upstream
    tmp = tmp_path_factory.mktemp("recorded")
    db = tmp / "recorded.db"
    config = {"store": {"path": str(db)}, "export": FAST_EXPORT, "capture": {"max_body_bytes": 64},
              "mocks": [{"path": "^/mocked$", "body": "hello from a mock"}]}
    with echo_upstream() as upstream, Gateway(config, tmp) as gw, gw.client() as client:
        a = {"x-sp-session-id": "demo-a"}
        assert client.get(f"{upstream.url}/json", headers=a).status_code == 200
        assert client.get(f"{upstream.url}/big/100", headers=a).status_code == 200
        assert client.get(f"http://{LOOPBACK}:{free_port()}/down", headers=a).status_code == 502
        assert client.get(f"{upstream.url}/mocked", headers=a).text == "hello from a mock"
        assert client.get(f"{upstream.url}/json", headers={"x-sp-session-id": "demo-b"}).status_code == 200
    return db


def test_version(capsys) -> None:
    done = subprocess.run([str(BIN / "softprobe"), "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == f"softprobe {__version__} (spec http-control-api@v1)"
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_session_and_exchange_ids_by_prefix(recorded, capsys) -> None:
    code, out, _ = run(capsys, "show", "demo-a", "--db", str(recorded))
    assert code == 0 and out.startswith("session demo-a") and "4 exchanges" in out
    code, out, err = run(capsys, "show", "demo-", "--db", str(recorded))
    assert code == 2 and out == ""
    assert err == ("softprobe: 'demo-' is ambiguous: it starts session demo-a, session demo-b; "
                   "give more of the id\n")
    # The timeline names each exchange by the start of its id; that start shows it in full.
    code, out, _ = run(capsys, "show", "demo-b", "--db", str(recorded))
    span = re.search(r"\+0\.000s  ([0-9a-f]{8})  outbound", out).group(1)
    code, out, _ = run(capsys, "show", span, "--db", str(recorded))
    assert code == 0 and out.startswith(f"exchange {span}") and "session demo-b" in out
    assert "  < content-type: application/json" in out and '  body (JSON, 29 bytes): {"ok": true, "items": [1, 2]}' in out
    code, out, _ = run(capsys, "har", "export", "demo-b", "--db", str(recorded))
    assert code == 0 and len(json.loads(out)["log"]["entries"]) == 1


def timeline(recorded, capsys) -> dict[str, str]:
    code, out, _ = run(capsys, "show", "demo-a", "--db", str(recorded))
    assert code == 0
    steps: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        if "->" in line:
            path = line.split("  -> ")[0].rsplit("/", 1)[1]
            steps[path] = line
        else:
            steps[path] += "\n" + line
    return steps


def test_show_gives_failure_reasons_truncation_and_mock_text(recorded, capsys) -> None:
    steps = timeline(recorded, capsys)
    assert re.search(r"-> failed \(.*(refused|connect).*\)  [\d.]+ ms  ERROR$", steps["down"], re.I), steps["down"]
    assert f"response (text, 64 bytes) [truncated: 64 of 100 bytes recorded]:\n        {'x' * 64}" in steps["100"]
    assert "response (text, 17 bytes): hello from a mock" in steps["mocked"]  # recorded as base64: no content-type


def test_har_gives_original_sizes_and_failure_reasons(recorded, capsys) -> None:
    code, out, _ = run(capsys, "har", "export", "demo-a", "--db", str(recorded))
    entries = {e["request"]["url"].rsplit("/", 1)[1]: e for e in json.loads(out)["log"]["entries"]}
    big = entries["100"]["response"]
    assert big["content"]["size"] == big["bodySize"] == 100 and big["content"]["text"] == "x" * 64
    assert big["content"]["comment"] == "truncated: the first 64 of 100 bytes were recorded"
    down = entries["down"]
    assert down["response"]["_error"] and down["comment"].endswith(f"failed: {down['response']['_error']}")
    assert entries["mocked"]["response"]["content"] == {"size": 17, "mimeType": "", "text": "hello from a mock"}


def test_har_into_a_missing_directory_is_one_line(recorded, tmp_path, capsys) -> None:
    target = tmp_path / "no" / "such" / "dir" / "s.har"
    code, out, err = run(capsys, "har", "export", "demo-a", "--db", str(recorded), "-o", str(target))
    assert (code, out, err) == (1, "", f"softprobe: {target}: No such file or directory\n")


def test_sessions_limit(recorded, capsys) -> None:
    assert run(capsys, "sessions", "--limit", "0", "--db", str(recorded)) == (0, "", "")
    assert len(run(capsys, "sessions", "--limit", "1", "--db", str(recorded))[1].splitlines()) == 2
    assert main(["sessions", "--limit", "-1", "--db", str(recorded)]) == 2
    assert "expected 0 or more, got -1" in capsys.readouterr().err


def test_sessions_says_what_the_gateway_did_not_record(tmp_path, upstream, capsys) -> None:
    admin = free_port()
    config = {"store": {"path": str(tmp_path / "empty.db")}, "admin_listen": f"{LOOPBACK}:{admin}"}
    with Gateway(config, tmp_path) as gw, gw.client() as client:
        assert client.get(f"{upstream.url}/page").status_code == 200  # text/html: static
        assert client.get(f"{upstream.url}/app.js").status_code == 200  # a static suffix
        wait_for(lambda: gw.metric(admin, 'softprobe_exchanges_skipped_total{reason="static"}') == 2)
        code, out, _ = run(capsys, "sessions", "--config", str(gw.config_path))
        log = gw.output()
    assert code == 0 and out.splitlines() == [
        f"no sessions recorded in {tmp_path / 'empty.db'}",
        f"the gateway at {LOOPBACK}:{admin} saw 2 exchanges and did not record 2: static 2 "
        "(its log says why, once per reason; docs/protocol.md, 'What is recorded')"]
    # Logged once for the reason, with the first example and the content-type that decided it.
    (line,) = [line for line in log.splitlines() if "not recording" in line]
    assert f"not recording GET {upstream.url}/page: it is a static resource" in line
    assert "(text/html)" in line and 'softprobe_exchanges_skipped_total{reason="static"}' in line
