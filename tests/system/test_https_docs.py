"""docs/transparent-and-https.md's private upstream, run as written (its `private-upstream`
markers) in a copy of the repository, the way test_readme runs the quick start: a local HTTPS
server with its own CA (made with `cryptography`), refused with a 502 by the quick start's
`make run`, answered and recorded once `tls.upstream_ca` names that CA."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from test_readme import Terminal, _ready, checkout, sh_blocks  # noqa: F401 (checkout: the fixture)

from testkit.support import ROOT, connectable, free_port, make_test_ca, wait_for

PAGE = ROOT / "docs" / "transparent-and-https.md"
UPSTREAM_PORT = 8443  # the page's upstream, https://127.0.0.1:8443/


def start_gateway(command: str, repo, env) -> subprocess.Popen:
    """`make run ...` in a terminal of its own, until the gateway is ready."""
    gateway = subprocess.Popen(["bash", "-c", command.split("#", 1)[0]], cwd=repo, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for(lambda: gateway.poll() is not None or _ready(), 60)
    assert gateway.poll() is None, gateway.stdout.read()
    return gateway


def stop_gateway(gateway: subprocess.Popen) -> str:
    """Ctrl-C in its terminal; its output."""
    if gateway.poll() is None:
        os.killpg(gateway.pid, signal.SIGINT)
    return gateway.communicate(timeout=30)[0]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_private_upstream_as_written(checkout, tmp_path) -> None:  # noqa: F811
    repo, env = checkout
    if connectable(UPSTREAM_PORT):
        pytest.skip(f"the page's upstream port {UPSTREAM_PORT} is in use on this machine")
    (first_run,), (refused_call,), (configure, second_run), (answered_call, show) = sh_blocks("private-upstream", PAGE)
    ca, cert, key = make_test_ca(tmp_path, "127.0.0.1")
    shutil.copy(ca, repo / "private-ca.pem")  # "private-ca.pem next to the Makefile"
    upstream = subprocess.Popen([sys.executable, str(ROOT / "testkit" / "tls_upstream.py"), "127.0.0.1",
                                 str(free_port()), str(UPSTREAM_PORT), f"127.0.0.1={cert}:{key}"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    terminal = Terminal(repo, env)
    gateways, logs = [], []
    try:
        assert upstream.stdout.readline().strip() == "ready"
        gateways.append(start_gateway(first_run, repo, env))
        output, status = terminal.run(refused_call)
        assert status == 0 and output.rstrip().endswith(" 502"), output
        assert "Certificate verify failed: unable to get local issuer certificate" in output, output
        # "recorded as a failed exchange": one exchange, one error
        table = terminal.until(".venv/bin/softprobe sessions", lambda out: "default-service" in out)
        assert [line.split()[-2:] for line in table.splitlines()[1:] if line.strip()] == [["1", "1"]], table
        logs.append(stop_gateway(gateways.pop()))

        assert terminal.run(configure)[1] == 0
        gateways.append(start_gateway(second_run, repo, env))
        output, status = terminal.run(answered_call)
        assert status == 0 and output.rstrip().endswith(" 200") and '"path": "/orders"' in output, output
        timeline = terminal.until(show, lambda out: "->" in out)
        assert "outbound GET 127.0.0.1:8443/orders  -> 200" in timeline, timeline
    finally:
        terminal.close()
        logs += [stop_gateway(g) for g in gateways]
        upstream.stdin.close()
        upstream.wait(10)
    assert len(logs) == 2 and "Traceback" not in "".join(logs), logs
