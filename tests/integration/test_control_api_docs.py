"""docs/control-api.md's commands, run as written (ports aside) against a real `softprobe serve`
and a real gateway: the gateway config of its first block, its shell session, its pytest example."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from testkit.serve import Backend, case_for
from testkit.support import BIN, Gateway

DOC = Path(__file__).resolve().parents[2] / "docs" / "control-api.md"
RUNTIME, GATEWAY = "127.0.0.1:8090", "127.0.0.1:8081"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_documented_session_runs(tmp_path: Path) -> None:
    start, script = blocks("bash")
    gateway_yaml = re.search(r"<<'EOF'\n(.*?)EOF\n", start, re.DOTALL)[1]
    (tmp_path / "rules.yaml").write_text(blocks("yaml")[0])
    (tmp_path / "checkout.case.json").write_text(json.dumps(case_for("prices.example.test")))
    (tmp_path / "test_checkout.py").write_text(blocks("python")[0])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    with Backend(tmp_path / "replay.db") as runtime:
        config = yaml.safe_load(gateway_yaml.replace(RUNTIME, runtime.url.removeprefix("http://")))
        with Gateway({**config, "export": {"flush_interval_ms": 20}}, tmp_path) as gw:
            ports = {RUNTIME: runtime.url.removeprefix("http://"), GATEWAY: gw.proxy.removeprefix("http://")}
            for documented, real in ports.items():
                script = script.replace(documented, real)
            script = script.replace(".venv/bin/", f"{BIN}/")  # the checkout's venv, wherever the test runs
            env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
            env.update(PATH=f"{BIN}:{env['PATH']}", SOFTPROBE_RUNTIME_URL=runtime.url, SOFTPROBE_GATEWAY=gw.proxy)
            shell = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=60)
            assert shell.returncode == 0, shell.stderr
            out = shell.stdout
            assert '{"price": 42}' in out and '{"paid": true}' in out
            stats = json.loads(next(line for line in out.splitlines() if '"injectedSpans"' in line))
            assert (stats["injectedSpans"], stats["mode"]) == (2, "replay")
            example = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_checkout.py"],
                                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert example.returncode == 0, example.stdout + example.stderr
            assert "1 passed" in example.stdout
