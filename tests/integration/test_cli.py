"""`softprobe` commands against real store files: tables, timelines, HAR, misses, config lookup."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

from testkit.cli import run
from testkit.spans import answered, extract_span, inject, traces
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


# -- a session as a tree, bodies as what they are, replay runs apart, misses by exchange id ---------

FLIGHTS = {"flights": [{"flight": f"SP{n}", "from": "SFO", "to": "JFK", "price": 300 + n} for n in range(40)]}


def _span(path: str, session: str, trace: bytes, parent=None, direction: str = "outbound", **fields):
    """A recorded exchange with a real-looking span id, in `trace`, under `parent` (a span)."""
    span = extract_span(path=path, session=session, **fields)
    span.trace_id, span.span_id = trace, os.urandom(8)
    span.parent_span_id = parent.span_id if parent is not None else b""
    for kv in span.attributes:
        if kv.key == "sp.traffic.direction":
            kv.value.string_value = direction
    return span


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """checkout-2: an inbound request, its two calls (one with a call of its own, through a second
    gateway), and an orphan of the same trace whose parent span is not in the session; a run of it
    answered, a run refused; a lookup that missed."""
    path, trace = tmp_path / "tree.db", os.urandom(16)
    inbound = _span("/checkout", "checkout-2", trace, direction="inbound", answer='{"ok": true}')
    pay = _span("/pay", "checkout-2", trace, inbound, answer=json.dumps(FLIGHTS), answer_type="application/json")
    orphan = _span("/elsewhere", "checkout-2", trace, _span("/unseen", "-", trace), answer="line one\nline two",
                   answer_type="text/plain")
    price = _span("/price", "checkout-2", trace, inbound, answer="AAEC", answer_type="image/png")
    bank = _span("/bank", "checkout-2", trace, pay, direction="inbound", answer="")
    with Store(StoreConfig(path=str(path))) as store:
        store.ingest(traces(inbound, pay, orphan, price, bank))
        store.ingest(traces(answered(_span("/pay", "checkout-2~1f2c21bf", trace), "hit"),
                            answered(_span("/pay", "checkout-2~9e8d7c6b", trace, status=404), "refusal")))
        store.lookup(inject(path="/price?sku=2", session="checkout-2~9e8d7c6b"))
    return path, {name: span.span_id.hex() for name, span in
                  (("inbound", inbound), ("pay", pay), ("orphan", orphan), ("price", price), ("bank", bank))}


def test_show_nests_calls_under_the_request_that_made_them(tree, capsys) -> None:
    db, ids = tree
    code, out, _ = run(capsys, "show", "checkout-2", "--db", db)
    steps = [re.match(r" +\+[\d.]+s  ( *)([0-9a-f]{8})  ", line) for line in out.splitlines() if "->" in line]
    assert code == 0 and [(len(m.group(1)), m.group(2)) for m in steps] == [
        (0, ids["inbound"][:8]), (4, ids["pay"][:8]), (8, ids["bank"][:8]), (4, ids["price"][:8]),
        (0, ids["orphan"][:8])]  # the orphan's parent is not in the session: at the top, in time order
    code, doc = _envelope(capsys, "show", "checkout-2", "--db", db)
    assert [(e["span_id"], e["parent"], e["depth"]) for e in doc["exchanges"]] == [
        (ids["inbound"], None, 0), (ids["pay"], ids["inbound"], 1), (ids["bank"], ids["pay"], 2),
        (ids["price"], ids["inbound"], 1), (ids["orphan"], None, 0)]


def test_bodies_are_laid_out_bounded_in_a_timeline_and_whole_for_an_exchange(tree, capsys) -> None:
    db, ids = tree
    body = json.dumps(FLIGHTS)
    out = run(capsys, "show", "checkout-2", "--db", db)[1]
    pay = out.split(ids["pay"][:8], 1)[1].split(ids["bank"][:8], 1)[0]
    assert f"response (JSON, {len(body)} bytes):" in pay and '\n              "flights": [' in pay
    assert '{"flight": "SP0", "from": "SFO", "to": "JFK", "price": 300},' in pay  # a member a line
    assert pay.count("\n") <= 2 + 12 + 1 and f"... (cut here: `softprobe show {ids['pay'][:8]}` shows it whole)" in pay
    assert "response (text, 17 bytes):\n        line one\n        line two" in out  # text as text
    assert "response (binary, 3 bytes, image/png)\n" in out and "AAEC" not in out  # its size only
    code, out, _ = run(capsys, "show", ids["pay"][:8], "--db", db)
    laid_out = out.split(f"body (JSON, {len(body)} bytes):\n", 1)[1]
    assert code == 0 and json.loads(laid_out) == FLIGHTS and len(laid_out.splitlines()) == 2 + 40 + 2
    assert "body (binary, 3 bytes, image/png, as base64): AAEC" in run(capsys, "show", ids["price"], "--db", db)[1]


def test_runs_are_listed_apart_and_a_recordings_prefix_stays_unambiguous(tree, capsys) -> None:
    db, _ = tree
    code, out, _ = run(capsys, "sessions", "--db", db)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:-1]] == ["checkout-2"]
    assert out.splitlines()[-1] == "(2 replay runs are not listed here: softprobe runs [SESSION])"
    assert _envelope(capsys, "sessions", "--db", db)[1]["runsHidden"] == 2
    code, out, _ = run(capsys, "runs", "checkout", "--db", db)
    header, *rows = (line.split() for line in out.splitlines())
    assert code == 0 and header == ["RUN", "SERVICE", "FIRST", "LAST", "EXCHANGES", "ANSWERED", "REFUSED", "MISSES",
                                    "ERRORS", "RESULT"]
    assert [(r[0], r[-5:]) for r in rows] == [("checkout-2~9e8d7c6b", ["0", "1", "1", "0", "FAIL"]),
                                              ("checkout-2~1f2c21bf", ["1", "0", "0", "0", "pass"])]
    runs = _envelope(capsys, "runs", "--db", db)[1]["runs"]
    assert [(r["id"], r["recorded"], r["passed"]) for r in runs] == [
        ("checkout-2~9e8d7c6b", "checkout-2", False), ("checkout-2~1f2c21bf", "checkout-2", True)]
    assert run(capsys, "runs", "checkout-2~9e8d7c6b", "--db", db)[1] == out  # a run's id: its recording's runs
    assert run(capsys, "show", "check", "--db", db)[1].startswith("session checkout-2  ")  # not ambiguous
    assert run(capsys, "show", "checkout-2~1f", "--db", db)[1].startswith("session checkout-2~1f2c21bf  ")
    assert run(capsys, "runs", "nothing", "--db", db)[1] == f"no replay runs of nothing in {db}\n"


def test_a_miss_names_the_closest_exchange_by_the_id_show_takes(tree, capsys) -> None:
    db, ids = tree
    code, out, _ = run(capsys, "misses", "--db", db)
    closest = re.search(r"^  closest: ([0-9a-f]{8}) GET api\.test:80/price in session checkout-2$", out, re.M)
    assert code == 0 and closest and closest.group(1) == ids["price"][:8], out
    assert run(capsys, "show", closest.group(1), "--db", db)[1].startswith(f"exchange {ids['price']}  session checkout-2")
    (miss,) = _envelope(capsys, "misses", "--db", db)[1]["misses"]
    assert (miss["closest_exchange"], miss["closest"]) == (ids["price"], "GET api.test:80/price in session checkout-2")


def _envelope(capsys, *argv: object) -> tuple[int, dict]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)
