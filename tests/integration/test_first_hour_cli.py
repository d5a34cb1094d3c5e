"""The `softprobe` commands a new user meets in the first hour (issue 28), as real processes: the
runtime the session commands default to, and what they say when a session or a runtime is missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testkit.support import BIN, LOOPBACK, connectable, free_port, wait_port

SERVE_DEFAULT = 8090  # `softprobe serve` without --listen


def softprobe(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("SOFTPROBE_RUNTIME_URL", "SOFTPROBE_SESSION_ID", "SOFTPROBE_API_TOKEN")}
    return subprocess.run([str(BIN / "softprobe"), *args], env={**environment, **env}, capture_output=True,
                          text=True, timeout=30, cwd=cwd)


def test_session_commands_default_to_serves_own_default(tmp_path: Path) -> None:
    if connectable(SERVE_DEFAULT):
        pytest.skip(f"port {SERVE_DEFAULT} is in use on this machine")
    serve = subprocess.Popen([str(BIN / "softprobe"), "serve", "--db", str(tmp_path / "s.db")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(SERVE_DEFAULT)
        started = softprobe("session", "start", "--mode", "replay")  # neither --runtime-url nor the env
        assert started.returncode == 0 and started.stdout.strip(), started.stderr
        stats = softprobe("session", "stats", SOFTPROBE_SESSION_ID=started.stdout.strip())
        assert stats.returncode == 0 and "injectedSpans=0" in stats.stdout, stats.stderr
    finally:
        serve.terminate()
        serve.wait(10)


def test_no_runtime_answering_is_exit_3_and_no_session_names_the_variable() -> None:
    down = f"http://{LOOPBACK}:{free_port()}"
    unreachable = softprobe("session", "start", "--mode", "replay", "--runtime-url", down)
    assert unreachable.returncode == 3 and f"runtime {down} unreachable" in unreachable.stderr
    missing = softprobe("session", "stats", "--runtime-url", down)
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "softprobe: session stats: no session: give --session ID or set $SOFTPROBE_SESSION_ID "
        "(`softprobe session start --shell` prints its export line)")



# Every command that talks to a runtime (its prog, its arguments), with what else it needs to get as
# far as its runtime.
RUNTIME_COMMANDS = (("session start", "--mode", "replay"), ("session stats", "--session", "s"),
                    ("suite run", "none.suite.yaml"), ("capture run", "--driver", "true"),
                    ("replay", "--session", "s"), ("doctor",), ("inspect session", "s"))
MALFORMED = {"127.0.0.1:8090": "no http:// or https:// (did you mean 'http://127.0.0.1:8090'?)",
             "http://127.0.0.1:99999": "a port that is not a number in 1-65535",
             "http://127.0.0.1:0": "'http://127.0.0.1:0' has a port that is not a number in 1-65535",
             "ftp://127.0.0.1:8090": "not an http or https URL",
             "http://:8090": "no host",
             "http://127.0.0.1:8090/v1?token=SECRET-query": "a query or fragment",
             "http://user:SECRET-password@127.0.0.1:8090":
                 "credentials, which do not belong in it (use $SOFTPROBE_API_TOKEN)",
             "http://[SECRET-host": "is not a URL (a malformed host)"}


def refused(command: tuple[str, ...], url: str, by_variable: bool, cwd: Path) -> str:
    """The one error line a malformed runtime URL gets (exit 2), from the flag or the variable."""
    prog, *rest = command
    given = [] if by_variable else ["--runtime-url", url]
    run = softprobe(*prog.split(), *rest, *given, cwd=cwd, **({"SOFTPROBE_RUNTIME_URL": url} if by_variable else {}))
    assert run.returncode == 2, (command, url, run.stderr)
    assert "SECRET" not in run.stderr + run.stdout and "Traceback" not in run.stderr, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    source = "$SOFTPROBE_RUNTIME_URL (its default): " if by_variable else ""
    assert last.startswith(f"softprobe {prog}: error: argument --runtime-url: {source}"), last
    assert last.endswith("; expected http(s)://HOST[:PORT]"), last
    return last


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_runtime_url_is_exit_2_saying_what_is_wrong(url: str, tmp_path: Path) -> None:
    for by_variable in (False, True):
        assert MALFORMED[url] in refused(RUNTIME_COMMANDS[0], url, by_variable, tmp_path)


@pytest.mark.parametrize("command", RUNTIME_COMMANDS[1:], ids=lambda c: c[0])
def test_every_command_taking_a_runtime_refuses_a_malformed_one(command, tmp_path: Path) -> None:
    refused(command, "127.0.0.1:8090", False, tmp_path)
    refused(command, "http://127.0.0.1:99999", True, tmp_path)


def test_a_well_formed_runtime_url_nothing_answers_stays_exit_3() -> None:
    down = f"http://{LOOPBACK}:{free_port()}"
    by_variable = softprobe("session", "start", "--mode", "replay", SOFTPROBE_RUNTIME_URL=down)
    assert by_variable.returncode == 3 and f"runtime {down} unreachable" in by_variable.stderr
    # The flag wins, and a malformed variable beside it is never looked at.
    by_flag = softprobe("session", "start", "--mode", "replay", "--runtime-url", down,
                        SOFTPROBE_RUNTIME_URL="127.0.0.1:8090")
    assert by_flag.returncode == 3 and f"runtime {down} unreachable" in by_flag.stderr, by_flag.stderr
