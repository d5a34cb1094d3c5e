"""Starting the export worker process (`softprobe_gateway.worker.process`) and talking to it:
the proxy's side of the process boundary."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from softprobe_gateway.config.schema import Config, ConfigError
from softprobe_gateway.export.handoff import BodyRing, ring_size
from softprobe_gateway.export.messages import GATEWAY_SIGNALS, Batch, Report, Retrying, Start, StartFailed, Stop

START_TIMEOUT_S = 60.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from softprobe_gateway.worker.process import main; main(int(sys.argv[2]))")


class WorkerProcess:
    """The proxy's handle on one running worker."""

    def __init__(self, config: Config) -> None:
        """Start a worker and wait until its sink is open; ConfigError when it cannot be."""
        parent, child = socket.socketpair()
        self.ring = BodyRing(ring_size(config.export))
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, GATEWAY_SIGNALS)  # inherited until main()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _PACKAGE_ROOT, str(child.fileno())],
                pass_fds=(child.fileno(), self.ring.fd), stdin=subprocess.DEVNULL)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            child.close()
            self.ring.inherited()
        self.pid = self.process.pid
        self.conn = Connection(parent.detach())
        try:
            self.conn.send(Start(config, self.ring.spec))
            if not self.conn.poll(START_TIMEOUT_S):
                raise ConfigError(f"the export worker process did not start within {START_TIMEOUT_S:.0f} s")
            answer = self.conn.recv()
        except (EOFError, OSError):
            answer = StartFailed(f"the export worker process exited at start ({self._exit_status()})")
        except ConfigError as e:
            answer = StartFailed(str(e))
        if isinstance(answer, StartFailed):
            self.kill()
            raise ConfigError(answer.error)

    def send(self, message: Batch | Stop) -> None:
        self.conn.send(self.ring.pack(message) if isinstance(message, Batch) else message)

    def receive(self) -> Report | Retrying:
        """The next report (or news of a retry); EOFError once the worker has exited."""
        message = self.conn.recv()
        if isinstance(message, Report):
            self.ring.release(message.seq)
        return message

    def kill(self) -> None:
        self.process.kill()
        self.close()

    def close(self) -> str:
        """Wait for the process to exit (it has been stopped or has died); how it ended."""
        self.conn.close()
        return self._exit_status()

    def _exit_status(self) -> str:
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
