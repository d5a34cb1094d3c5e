"""`make demo`: the travel demo on this machine, recorded by the gateway, then shown.

Starts the airline and front services, the gateway (reverse listener in front of front, proxy
listener for front's calls to the airline, embedded store), runs a search/book/pay session,
stops the gateway (which flushes the export) and shows the session with `softprobe`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {LOOPBACK}:{port} after {timeout}s")


@contextmanager
def started(args: list[str], port: int, log: Path, **env: str) -> Iterator[subprocess.Popen]:
    """A child process, running once `port` accepts; stopped with SIGTERM like in Kubernetes."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        try:
            wait_port(port, process)
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, help="where the store and logs go (default: a new tmp dir)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="softprobe-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    airline, front, proxy, inbound, admin = (free_port() for _ in range(5))
    db = work / "softprobe.db"
    config = yaml.safe_load((HERE / "gateway.yaml").read_text())
    config.update(admin_listen=f"{LOOPBACK}:{admin}", store={"path": str(db)})
    (work / "gateway.yaml").write_text(yaml.safe_dump(config))
    app = HERE / "app"
    session = f"sp-session-travel-{uuid.uuid4().hex[:8]}"
    # The gateway's own environment must not point at a proxy: it would loop its export.
    clean = {k: "" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}

    with ExitStack() as stack:
        stack.enter_context(started([sys.executable, str(app / "airline.py"), "--host", LOOPBACK,
                                     "--port", str(airline)], airline, work / "airline.log"))
        gateway = stack.enter_context(started([
            str(BIN / "mitmdump"), "-s", str(ROOT / "addon" / "softprobe_addon.py"),
            "--mode", f"regular@{LOOPBACK}:{proxy}",
            "--mode", f"reverse:http://{LOOPBACK}:{front}@{LOOPBACK}:{inbound}",
            "--set", f"softprobe_config={work / 'gateway.yaml'}", "--set", f"confdir={work / 'mitmproxy'}",
            "--set", "connection_strategy=lazy", "--set", "flow_detail=0",
        ], inbound, work / "gateway.log", **clean))
        stack.enter_context(started([sys.executable, str(app / "front.py"), "--host", LOOPBACK,
                                     "--port", str(front)], front, work / "front.log",
                                    AIRLINE_URL=f"http://{LOOPBACK}:{airline}",
                                    EGRESS_PROXY=f"http://{LOOPBACK}:{proxy}"))
        print(f"== travel session {session}: front (via the gateway) -> airline (via the gateway)", flush=True)
        traffic = subprocess.run([sys.executable, str(app / "traffic.py"), "--front", f"http://{LOOPBACK}:{inbound}",
                                  "--session", session])
        if traffic.returncode != 0:
            print(f"traffic failed; logs in {work}", file=sys.stderr)
            return 1
        stop(gateway)  # SIGTERM flushes everything recorded into the store
        if gateway.returncode != 0:
            print(f"the gateway exited with {gateway.returncode}; see {work / 'gateway.log'}", file=sys.stderr)
            return 1
    # What replay_demo.py needs: the session, and the airline's address its recording names.
    (work / "demo.json").write_text(json.dumps({"session": session, "airline_url": f"http://{LOOPBACK}:{airline}"}))

    softprobe = shutil.which("softprobe", path=str(BIN)) or "softprobe"
    print("\n== softprobe sessions", flush=True)
    subprocess.run([softprobe, "sessions", "--db", str(db)], check=True)
    print(f"\n== softprobe show {session}", flush=True)
    subprocess.run([softprobe, "show", session, "--db", str(db)], check=True)
    print(f"\nstore and logs: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
