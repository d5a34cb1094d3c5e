"""`softprobe serve` as a real process on a loopback port."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx

from testkit.support import BIN, LOOPBACK, free_port, wait_port


class Backend:
    """`softprobe serve` on a free loopback port, with its store in `db`."""

    def __init__(self, db: Path) -> None:
        self.db = db
        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        self.process = subprocess.Popen(
            [str(BIN / "softprobe"), "serve", "--listen", f"{LOOPBACK}:{port}", "--db", str(db)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_port(port)
        self.client = httpx.Client(base_url=self.url, trust_env=False, timeout=10)

    def stop(self) -> int:
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)
