"""The CLI's commands over files and the store, and the whole tree's `--json`: validate, scrub,
completion (sourced in real bash, zsh and fish), the envelopes of the store commands, and argparse's
own errors as envelopes, with Softprobe's exit codes (`docs-site/reference/cli.md`)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from softprobe_gateway.cli import main, parsers
from testkit.cli import run
from testkit.serve import case_for
from testkit.support import BIN

ROOT = Path(__file__).resolve().parents[2]


def envelope(capsys, *argv: object) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, *argv, "--json")
    document = json.loads(out)
    assert document["exitCode"] == code and (document["error"] is None) == (code == 0), document
    return code, document


def span(attributes: dict[str, str], span_id: str = "b7ad6b7169203331") -> dict[str, Any]:
    return {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": span_id, "name": "/login", "kind": 2,
            "startTimeUnixNano": "1", "endTimeUnixNano": "2",
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()]}


def case(*spans: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.0.0", "caseId": "login", "traces": [{"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}]}


LOGIN = {"sp.session.id": "login-1", "sp.traffic.direction": "inbound", "sp.span.type": "extract",
         "url.host": "app.test", "url.path": "/login", "url.query": "token=abc123&page=2", "http.request.method": "POST",
         "http.request.header.authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.signature",
         "http.request.header.content-type": "application/json",
         "http.request.header.x-note": "paid with 4111 1111 1111 1111",
         "http.request.body": '{"user": "ann", "password": "hunter2", "card": {"number": "5500005555555559"}}',
         "http.response.header.set-cookie": "sid=s3cr3t", "http.response.header.content-type": "application/json",
         "http.response.body": '{"ok": true, "user": "ann"}'}


def test_validate_case_rules_and_suite(capsys, tmp_path: Path) -> None:
    good, bad, undecodable = tmp_path / "good.case.json", tmp_path / "bad.case.json", tmp_path / "odd.case.json"
    good.write_text(json.dumps(case_for("prices.test")))
    bad.write_text(json.dumps({"version": "1.0.0", "traces": [{"resourceSpans": []}]}))
    undecodable.write_text(json.dumps(case(span({}, span_id="zz"))))  # schema-valid, but no span id in hex
    assert envelope(capsys, "validate", "case", good)[1] | {"error": None} == {
        "status": "ok", "exitCode": 0, "error": None, "path": str(good), "valid": True, "errors": []}
    code, doc = envelope(capsys, "validate", "case", bad)
    assert (code, doc["valid"], doc["error"]["code"]) == (5, False, "validation_failed")
    assert doc["errors"] == ["$: 'caseId' is a required property",
                             "$.traces[0].resourceSpans: [] should be non-empty"], doc["errors"]
    code, doc = envelope(capsys, "validate", "case", undecodable)
    assert code == 5 and "not OTLP JSON traces" in doc["errors"][0]
    assert envelope(capsys, "validate", "case", tmp_path / "missing.json")[0] == 1  # unreadable is not invalid
    softprobes = ROOT / "tests/data/cli-suite-run/spec/examples/cases/fragment-happy-path.case.json"  # Softprobe's own
    assert envelope(capsys, "validate", "case", softprobes)[1]["valid"] is True
    summary = envelope(capsys, "inspect", "case", softprobes)[1]["spanSummary"]
    assert [(s["direction"], s["method"], s["host"], s["path"], s["status"]) for s in summary] == [
        ("outbound", "GET", "softprobe-proxy:8084", "/fragment", 200)]

    rules = tmp_path / "rules.yaml"
    rules.write_text("- when: {host: a.test}\n  then: {action: mock, response: {status: 200}}\n")  # a bare list
    assert envelope(capsys, "validate", "rules", rules)[0] == 0
    rules.write_text("rules:\n  - when: {direction: sideways}\n    then: {action: passthrough}\n")
    code, doc = envelope(capsys, "validate", "rules", rules)
    assert code == 5 and doc["errors"][0].startswith("$.rules[0].when.direction: 'sideways' is not one of")
    rules.write_text("rules: [unclosed\n")
    assert envelope(capsys, "validate", "rules", rules)[1]["errors"][0].startswith("$: not JSON or YAML")

    suite, login = tmp_path / "checkout.suite.yaml", tmp_path / "login.case.json"
    login.write_text(json.dumps(case(span(LOGIN))))  # a suite's case needs the inbound request it sends again
    suite.write_text(f"name: checkout\ncases:\n  - path: {login.name}\n")
    code, doc = envelope(capsys, "validate", "suite", suite)
    assert code == 0 and doc["suite"] == "checkout" and doc["errors"] == []
    suite.write_text("name: checkout\ncases:\n  - path: nowhere.case.json\n")
    code, doc = envelope(capsys, "validate", "suite", suite)
    assert code == 5 and doc["errors"] and doc == {**envelope(capsys, "suite", "validate", suite)[1]}  # one check


def test_scrub_redacts_case_files_in_place(capsys, tmp_path: Path) -> None:
    first, second = tmp_path / "a.case.json", tmp_path / "b.case.json"
    for path in (first, second):
        path.write_text(json.dumps(case(span(LOGIN))))
        path.chmod(0o600)
    code, doc = envelope(capsys, "scrub", str(tmp_path / "*.case.json"))
    assert code == 0 and doc["changed"] == 2
    assert doc["files"][0] == {"path": str(first), "changed": True, "redacted": 3, "dropped": 2}
    text = first.read_text()
    for secret in ("eyJhbGciOiJIUzI1NiJ9", "s3cr3t", "hunter2", "4111 1111", "5500005555555559", "abc123"):
        assert secret not in text, secret
    attributes = {kv["key"]: kv["value"]["stringValue"] for kv in json.loads(text)["traces"][0]["resourceSpans"][0]
                  ["scopeSpans"][0]["spans"][0]["attributes"]}
    assert "http.request.header.authorization" not in attributes and "http.response.header.set-cookie" not in attributes
    assert json.loads(attributes["http.request.body"]) == {"user": "ann", "password": "[REDACTED]",
                                                           "card": {"number": "[REDACTED]"}}
    assert attributes["url.query"] == "token=[REDACTED]&page=2" and attributes["http.response.body"] == '{"ok": true, "user": "ann"}'
    assert stat.S_IMODE(first.stat().st_mode) == 0o600  # replaced, its mode kept
    assert envelope(capsys, "validate", "case", first)[0] == 0  # still a valid case
    before = first.stat().st_mtime_ns
    code, doc = envelope(capsys, "scrub", first)  # twice: nothing left, the file untouched
    assert (code, doc["changed"], first.stat().st_mtime_ns) == (0, 0, before)

    second.write_text(json.dumps(case(span(LOGIN))))  # as recorded again: the config's own rules now
    config = tmp_path / "gateway.yaml"
    config.write_text("redaction:\n  extra_fields: [user]\ncapture:\n  drop_headers: [x-note]\n")
    code, doc = envelope(capsys, "scrub", second, "--rules", config)
    assert code == 0 and doc["files"][0]["dropped"] == 3 and '"user": "ann"' not in second.read_text()
    not_a_case = tmp_path / "notes.json"
    not_a_case.write_text('{"hello": 1}')
    assert envelope(capsys, "scrub", not_a_case)[0] == 5
    assert envelope(capsys, "scrub", str(tmp_path / "nothing-*.json"))[0] == 1


def test_store_commands_envelopes(capsys, tmp_path: Path) -> None:
    """sessions, show, misses, case export/import and har export under --json: their data, not their text."""
    db, source = tmp_path / "store.db", tmp_path / "login.case.json"
    source.write_text(json.dumps(case(span(LOGIN))))
    code, doc = envelope(capsys, "case", "import", source, "--db", db)
    assert code == 0 and doc["files"] == [{"path": str(source), "exchanges": 1, "imported": 1, "sessions": ["login-1"]}]
    code, doc = envelope(capsys, "sessions", "--db", db)
    assert code == 0 and [(s["id"], s["exchanges"]) for s in doc["sessions"]] == [("login-1", 1)]
    code, doc = envelope(capsys, "show", "login", "--db", db)
    assert (code, doc["kind"], doc["session"]["id"], len(doc["exchanges"])) == (0, "session", "login-1", 1)
    assert doc["exchanges"][0]["method"] == "POST" and doc["exchanges"][0]["path"].startswith("/login")
    code, doc = envelope(capsys, "show", "b7ad", "--db", db)
    assert (code, doc["kind"], doc["exchange"]["span_id"]) == (0, "exchange", "b7ad6b7169203331")
    assert envelope(capsys, "misses", "--db", db)[1]["misses"] == []
    code, doc = envelope(capsys, "case", "export", "login-1", "--db", db)
    assert code == 0 and doc["caseId"] == "login-1" and doc["case"]["traces"] and doc["exchanges"] == 1
    code, doc = envelope(capsys, "har", "export", "login-1", "--db", db, "-o", tmp_path / "s.har")
    assert code == 0 and doc["entries"] == 1 and doc["outputPath"] == str(tmp_path / "s.har")
    code, doc = envelope(capsys, "show", "nope", "--db", db)
    assert (code, doc["error"]["code"]) == (4, "session_not_found")
    code, doc = envelope(capsys, "sessions", "--db", tmp_path / "absent.db")
    assert (code, doc["status"]) == (1, "fail")
    code, doc = envelope(capsys, "ca", "cert", "--dir", tmp_path / "no-ca")  # no fields of its own: its text
    assert code == 2 and doc["error"]["code"] == "invalid_arguments"


def test_every_command_takes_json_and_bad_arguments_answer_an_envelope(capsys) -> None:
    top = main.parser()
    leaves = [path for path, parser in parsers.walk(top) if path and not parsers.subcommands(parser)]
    assert len(leaves) >= 30 and ("doctor",) in leaves and ("export", "otlp") in leaves
    for path, parser in parsers.walk(top):
        if path in leaves:
            assert any("--json" in action.option_strings for action in parser._actions), path
    for argv, message in ((["session", "start"], "--mode"), (["nope"], "invalid choice"),
                          (["sessions", "--limit", "-1"], "expected 0 or more")):
        code, out, err = run(capsys, *argv, "--json")
        document = json.loads(out)
        assert (code, document["status"], document["exitCode"], document["error"]["code"]) == (
            2, "fail", 2, "invalid_arguments")
        assert message in document["error"]["message"] and "usage: softprobe" in err
    code, out, _ = run(capsys, "--json", "validate", "rules", "/nonexistent/rules.yaml")  # the global flag too
    assert code == 1 and json.loads(out)["error"]["code"] == "io_error"
    assert run(capsys, "-q", "completion", "bash") == (0, "", "")


def complete_bash(script: Path, *words: str) -> list[str]:
    """What `softprobe WORDS<TAB>` offers in a real bash that sourced the script (the last word is the one typed)."""
    words_array = " ".join(f"'{w}'" for w in ("softprobe", *words))
    program = (f"source {script}; COMP_WORDS=({words_array}); COMP_CWORD={len(words)}; _softprobe; "
               "printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, cwd=script.parent)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return sorted(done.stdout.split())


def test_completion_in_bash(capsys, tmp_path: Path) -> None:
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    path = tmp_path / "softprobe.bash"
    path.write_text(script)
    (tmp_path / "checkout.case.json").write_text("{}")
    assert complete_bash(path, "se") == ["serve", "session", "sessions"]
    assert complete_bash(path, "session", "") == ["close", "load-case", "policy", "rules", "start", "stats"]
    assert complete_bash(path, "--json", "session", "start", "--mode", "") == ["capture", "generate", "replay"]
    assert complete_bash(path, "validate", "") == ["case", "rules", "suite"]
    assert complete_bash(path, "completion", "") == ["bash", "fish", "zsh"]
    assert complete_bash(path, "export", "otlp", "--pro") == ["--protocol"]
    assert complete_bash(path, "doctor", "--runtime-url", "http://x", "--p") == ["--proxy"]
    assert complete_bash(path, "inspect", "case", "check") == ["checkout.case.json"]  # files for arguments
    assert complete_bash(path, "suite", "") == sorted(parsers.subcommands(
        parsers.subcommands(main.parser())["suite"]))  # whatever the parser has: written from it


@pytest.mark.skipif(not (shutil.which("zsh") and shutil.which("fish")), reason="make system-deps installs zsh and fish")
def test_completion_in_zsh_and_fish(capsys, tmp_path: Path) -> None:
    zsh_script, fish_script = tmp_path / "_softprobe", tmp_path / "softprobe.fish"
    zsh_script.write_text(run(capsys, "completion", "zsh")[1])
    fish_script.write_text(run(capsys, "completion", "fish")[1])
    # zsh: the completion function with compadd and _files recorded (zsh's own compadd filters by prefix).
    program = (f"source {zsh_script}; compadd() {{ [[ $1 == -- ]] && shift; print -r -- $*; }}; "
               "_files() { print -r -- FILES; }; "
               "words=(softprobe session start --mode ''); CURRENT=5; _softprobe; "
               "words=(softprobe validate ''); CURRENT=3; _softprobe; "
               "words=(softprobe inspect case ''); CURRENT=4; _softprobe")
    done = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.splitlines() == ["capture replay generate", "case rules suite", "FILES"]
    # fish: its own completion engine, `complete -C`, with softprobe on PATH.
    program = (f"source {fish_script}; complete -C'softprobe se'; echo ==; complete -C'softprobe session start --mode '"
               "; echo ==; complete -C'softprobe export otlp --pro'")
    done = subprocess.run(["fish", "--no-config", "-c", program], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    groups = [sorted(line.split("\t")[0] for line in group.strip().splitlines())
              for group in done.stdout.split("==\n")]
    assert groups == [["serve", "session", "sessions"], ["capture", "generate", "replay"], ["--protocol"]]
