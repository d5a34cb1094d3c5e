"""docs/suites.md run as written (ports aside): its two gateway configs, its `suite run` command
against a real `softprobe serve`, the two gateways and the example's app, and its output; then the
same command against the version of the app that answers `bye`, and the failure it documents."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from testkit.suite_app import fragment_stack
from testkit.support import BIN

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "suites.md"
RUNTIME, INGRESS = "http://127.0.0.1:8090", "http://127.0.0.1:8082"


def blocks(language: str) -> list[str]:
    """The page's fenced blocks of `language` ("" for plain output), in order."""
    found = re.findall(r"^```(\w*)\n(.*?)^```$", DOC.read_text(), re.DOTALL | re.MULTILINE)
    return [body for lang, body in found if lang == language]


def shape(text: str) -> list[str]:
    """Output lines with the times left out."""
    return [re.sub(r"\(\d+ms\)", "(N ms)", line) for line in text.strip().splitlines()]


def run_documented(tmp: Path, message: str) -> subprocess.CompletedProcess:
    egress, ingress = (yaml.safe_load(b.replace(RUNTIME, "'{runtime}'")) for b in blocks("yaml"))
    (script,) = blocks("bash")
    with fragment_stack(tmp, message, egress, ingress) as stack:
        script = script.replace(RUNTIME, stack.runtime.url).replace(INGRESS, stack.ingress.proxy)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOFTPROBE_RUNTIME", "APP_URL", "INGRESS"))}
        env["PATH"] = f"{BIN}:{env['PATH']}"
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)


def test_the_documented_run_and_its_output(tmp_path: Path) -> None:
    passed, failed = blocks("")[:2]
    done = run_documented(tmp_path, "hello")
    assert done.returncode == 0, done.stdout + done.stderr
    assert shape(done.stdout) == shape(passed)
    broken = run_documented(tmp_path / "bye", "bye")
    assert broken.returncode == 20, broken.stdout + broken.stderr
    assert shape(broken.stdout) == shape(failed)


def test_the_documented_runtime_is_the_one_suite_run_asks_by_default() -> None:
    """The page's runtime (serve's default address) is `suite run`'s default, not `make run`'s 8080."""
    from softprobe_gateway.cli.session import DEFAULT_RUNTIME

    assert RUNTIME == DEFAULT_RUNTIME
    assert f"| `--runtime-url URL` | `$SOFTPROBE_RUNTIME_URL`, else `{DEFAULT_RUNTIME}`" in DOC.read_text()
