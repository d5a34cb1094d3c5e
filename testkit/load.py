"""Load through a gateway from real HTTP/1.1 clients, each request with a unique path, so a test
can tell exactly which exchanges a client was answered for and look each one up in a backend.

Each client is a thread on one keep-alive `http.client` connection (light: the gateway, not the
client, should be what the machine's CPU is spent on), sending `GET http://UPSTREAM/load/K/I`
through the proxy. A connection the gateway closes is reopened; once the gateway refuses new
connections (it is stopping, or gone), the client stops. Bounded in count and time.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field

from testkit.support import LOOPBACK, wait_for


@dataclass
class Load:
    proxy_port: int
    upstream: str  # http://127.0.0.1:PORT
    clients: int = 4
    max_requests: int = 20_000  # per client
    max_seconds: float = 60.0
    pause_s: float = 0.0  # between a client's requests
    answered: list[str] = field(default_factory=list)  # paths answered 200, in answer order
    answered_at: list[float] = field(default_factory=list)  # and when (time.time())
    failed: int = 0  # requests sent and not answered (reset, refused on reconnect)
    other: int = 0  # answered with another status
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._client, args=(k,), daemon=True)
                         for k in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def wait_answered(self, count: int, timeout: float = 30.0) -> None:
        wait_for(lambda: len(self.answered) >= count, timeout)

    def stop(self) -> Load:
        self._stop.set()
        return self.join()

    def join(self, timeout: float = 30.0) -> Load:
        """Wait for the clients to end (by `stop`, or because the gateway refuses them)."""
        for thread in self._threads:
            thread.join(timeout)
        return self

    @property
    def running(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def _client(self, k: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        connection: http.client.HTTPConnection | None = None
        for i in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            path = f"/load/{k}/{i}"
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(LOOPBACK, self.proxy_port, timeout=30)
                    connection.connect()
            except OSError:
                break  # refused: the gateway no longer accepts connections
            try:
                connection.request("GET", f"{self.upstream}{path}")
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.failed += 1
                connection.close()
                connection = None
                continue
            with self._lock:
                if response.status == 200:
                    self.answered.append(path)
                    self.answered_at.append(time.time())
                else:
                    self.other += 1
            if response.will_close:
                connection.close()
                connection = None
            if self.pause_s:
                time.sleep(self.pause_s)
        if connection is not None:
            connection.close()
