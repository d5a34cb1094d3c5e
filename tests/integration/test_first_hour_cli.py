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
