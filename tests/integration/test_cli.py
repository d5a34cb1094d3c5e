"""`softprobe` commands against real store files: tables, timelines, HAR, misses, config lookup."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

from testkit.cli import run
from testkit.spans import extract_span, inject, traces
from testkit.support import BIN


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "recorded.db"
    with Store(StoreConfig(path=str(path))) as store:
        store.ingest(traces(
            extract_span(path="/cart?user=7", session="checkout-1", answer='{"items": 2}'),
            extract_span("POST", path="/pay", session="checkout-1", body='{"amount": 10}',
                         content_type="application/json", status=502, answer="bad gateway",
                         answer_type="text/plain"),
            extract_span(path="/logo", session="checkout-1", answer="iVBORw0KGgo=", answer_type="image/png"),
            extract_span(path="/other", session="browse-1")))
        store.lookup(inject("POST", path="/pay", session="replay", body='{"amount": 11}',
                            content_type="application/json"))
    return path




def test_sessions_table(db: Path, capsys) -> None:
    code, out, _ = run(capsys, "sessions", "--db", str(db))
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["SESSION", "SERVICE", "FIRST", "LAST", "EXCHANGES", "ERRORS"]
    assert [r.split()[0] for r in rows] == ["browse-1", "checkout-1"]  # most recent first
    checkout = rows[1].split()
    assert checkout[1] == "checkout" and checkout[-2:] == ["3", "1"]


def test_show_is_a_timeline_in_recorded_order(db: Path, capsys) -> None:
    code, out, _ = run(capsys, "show", "checkout-1", "--db", str(db))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("session checkout-1") and "3 exchanges, 1 errors" in lines[0]
    steps = [line for line in lines if "->" in line]
    assert ["/cart?user=7" in steps[0], "POST api.test:80/pay" in steps[1], "/logo" in steps[2]] == [True] * 3
    assert "-> 502" in steps[1] and steps[1].endswith("ERROR")
    assert 'request (JSON, 14 bytes): {"amount": 10}' in out and "response (text, 11 bytes): bad gateway" in out
    assert "response (binary, 8 bytes, image/png)" in out  # its size, not its base64


def test_har_is_valid_har_1_2(db: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "checkout.har"
    assert run(capsys, "har", "export", "checkout-1", "--db", str(db), "-o", str(target))[0] == 0
    log = json.loads(target.read_text())["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "softprobe"
    cart, pay, logo = log["entries"]
    for entry in log["entries"]:
        assert {"startedDateTime", "time", "request", "response", "cache", "timings"} <= entry.keys()
        assert {"method", "url", "httpVersion", "cookies", "headers", "queryString",
                "headersSize", "bodySize"} <= entry["request"].keys()
        assert {"status", "statusText", "httpVersion", "cookies", "headers", "content",
                "redirectURL", "headersSize", "bodySize"} <= entry["response"].keys()
        assert entry["startedDateTime"].endswith("Z")
        assert all(not h["name"].startswith(":") for h in entry["request"]["headers"])
    assert cart["request"]["url"] == "http://api.test:80/cart?user=7"
    assert cart["request"]["queryString"] == [{"name": "user", "value": "7"}]
    assert pay["request"]["postData"] == {"mimeType": "application/json", "text": '{"amount": 10}'}
    assert (pay["response"]["status"], pay["response"]["statusText"]) == (502, "Bad Gateway")
    assert logo["response"]["content"] == {"size": 8, "mimeType": "image/png", "text": "iVBORw0KGgo=",
                                           "encoding": "base64"}


def test_misses_show_closest_and_diff(db: Path, capsys) -> None:
    code, out, _ = run(capsys, "misses", "--db", str(db))
    assert code == 0 and "POST api.test:80/pay  session replay" in out
    assert "POST api.test:80/pay in session checkout-1" in out.split("closest: ", 1)[1].splitlines()[0]
    assert "body.amount: recorded 10, got 11" in out


def test_db_path_from_config_file_env_and_default(db: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"store:\n  path: {db}\n")
    assert "checkout-1" in run(capsys, "sessions", "--config", str(config))[1]
    monkeypatch.setenv("SOFTPROBE_CONFIG", str(config))
    assert "checkout-1" in run(capsys, "sessions")[1]
    monkeypatch.delenv("SOFTPROBE_CONFIG")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "sessions")
    assert code == 1 and err.strip() == "softprobe: store softprobe.db: no such file (nothing recorded yet?)"


def test_errors_are_one_line_and_exit_2(db: Path, capsys) -> None:
    code, _, err = run(capsys, "show", "missing-session", "--db", str(db))
    assert code == 4 and err == f"softprobe: no session or exchange 'missing-session' in {db}\n"


def test_console_script_runs(db: Path) -> None:
    done = subprocess.run([str(BIN / "softprobe"), "sessions", "--db", str(db)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "checkout-1" in done.stdout
