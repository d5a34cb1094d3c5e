"""Several `softprobe serve` replicas on one PostgreSQL database behind a real nginx (testkit.nginx),
as k8s/overlays/postgres-backend runs them behind a Service: `client` speaks to the load balancer,
each replica's own `client` to it directly; `kill` is a `kill -9`, `restart` a rolling update's step
(SIGTERM, then a new replica where the old one listened, ready before it returns)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from testkit.nginx import LoadBalancer
from testkit.serve import KEY, Backend
from testkit.support import LOOPBACK, wait_for

PROTOBUF = {"content-type": "application/x-protobuf"}


class Replicas:
    def __init__(self, tmp: Path, store: str, count: int = 2, key: str = KEY, args: tuple[str, ...] = ()) -> None:
        """`store`: a PostgreSQL URL, or empty for one replica on a SQLite file of its own."""
        self.tmp, self.store, self.key, self.args = tmp, store, key, args
        self.started = 0
        self.backends: list[Backend] = []
        try:
            self.backends = [self._start() for _ in range(count)]
            self.lb = LoadBalancer(tmp / "nginx", [f"{LOOPBACK}:{b.port}" for b in self.backends])
        except BaseException:
            self._stop_backends()
            raise
        self.client = httpx.Client(base_url=self.lb.url, trust_env=False, timeout=30,
                                   headers={"authorization": f"Bearer {key}"} if key else {})

    def _start(self, port: int = 0) -> Backend:
        self.started += 1
        backend = Backend(self.tmp / f"replica-{self.started}", self.key, args=self.args, store=self.store,
                          port=port)
        wait_for(lambda: backend.client.get("/ready").status_code == 200, 30)
        return backend

    def kill(self, n: int) -> None:
        """`kill -9` replica `n`: no graceful stop, requests in flight on it cut."""
        self.backends[n].process.send_signal(signal.SIGKILL)
        self.backends[n].process.wait(10)

    def restart(self, n: int) -> int:
        """SIGTERM replica `n` (its exit code is returned), then a new one on its port, ready."""
        code = self.backends[n].stop()
        self.backends[n] = self._start(self.backends[n].port)
        return code

    def _stop_backends(self) -> None:
        for backend in self.backends:
            if backend.process.poll() is None:
                backend.stop()
            else:
                backend.client.close()

    def close(self) -> None:
        self.client.close()
        self.lb.stop()
        self._stop_backends()

    def __enter__(self) -> Replicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
