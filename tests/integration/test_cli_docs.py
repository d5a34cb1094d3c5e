"""docs/cli.md's shell session, run as written (ports aside) against a real `softprobe serve`, a
real gateway recording into it, the travel demo's airline service and an OTLP collector."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from testkit.recording import FAST_EXPORT
from testkit.serve import Backend
from testkit.support import BIN, LOOPBACK, Gateway, OtlpBackend, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cli.md"


def test_the_documented_capture_runs(tmp_path: Path) -> None:
    (script,) = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.DOTALL)
    app_port, admin = free_port(), f"{LOOPBACK}:{free_port()}"
    airline = subprocess.Popen([sys.executable, str(ROOT / "examples/travel/app/airline.py"), "--host", LOOPBACK,
                                "--port", str(app_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(app_port)
        with Backend(tmp_path / "runtime.db", cwd=tmp_path) as runtime, OtlpBackend() as collector, \
                Gateway({"sp_backend_url": runtime.url, "admin_listen": admin, "export": FAST_EXPORT}, tmp_path) as gw:
            ports = {"127.0.0.1:8090": runtime.url.removeprefix("http://"), "127.0.0.1:8081": gw.proxy.removeprefix(
                "http://"), "127.0.0.1:9090": admin, "127.0.0.1:8000": f"{LOOPBACK}:{app_port}",
                "127.0.0.1:4318": collector.url.removeprefix("http://")}
            for documented, real in ports.items():
                script = script.replace(documented, real)
            env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
            env["PATH"] = f"{BIN}:{env['PATH']}"
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            spans = collector.wait_spans(1)
    finally:
        airline.terminate()
        airline.wait(10)
    out = done.stdout
    assert "✓ gateway-ready" in out and "✓ header-echo" in out
    assert re.search(r"session \S+ closed: 1 spans captured, case \S+flights\.case\.json", out), out
    assert "cases/flights.case.json: nothing to redact" in out and "cases/flights.case.json: valid" in out
    assert re.search(r"outbound +GET +127\.0\.0\.1:\d+/flights\?from=SFO&to=JFK +200", out), out
    assert "export otlp: sent=1 failed=0" in out and out.rstrip().endswith("ok")
    case = (tmp_path / "cases" / "flights.case.json").read_text()
    assert "s3cr3t-t0ken" not in case and json.loads(case)["caseId"]
    assert [span.name for _, span in spans] == ["/flights"]
