"""`softprobe serve`'s processes: one listen socket, one or more workers, a graceful stop.

The socket is bound once, with a real backlog (a burst of clients is queued, not reset), and
shared by `workers` forked processes, each with its own store connection(s) and its own uvicorn
server: the kernel spreads connections between them. One worker runs in the process itself. On
SIGTERM (or Ctrl-C) a worker stops accepting, lets in-flight requests finish (within
`Limits.grace` seconds), closes its store and exits 0; the parent of several forwards the signal
and exits 0 when they all have, so a rolling update loses nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn

from softprobe_gateway.server.app import App
from softprobe_gateway.server.protocol import connection_cap, guarded
from softprobe_gateway.store.store import Store

_STOP = (signal.SIGTERM, signal.SIGINT)
RESTART_AFTER = 1.0  # seconds a worker that died must have lived before another starts at once


@dataclass(frozen=True)
class Limits:
    """Seconds and counts a client can take of the server."""

    keep_alive: float = 30.0  # an idle keep-alive connection is closed after this
    timeout: float = 30.0  # a request's head, and its body, must arrive within this
    max_connections: int = 1000  # beyond it the oldest idle connection is closed; requests get 503
    backlog: int = 2048  # connections queued by the kernel before accept (capped by somaxconn)
    grace: float = 30.0  # in-flight requests' time to finish on SIGTERM


def loopback_only(host: str) -> bool:
    """Whether every address `host` stands for is a loopback one (127.0.0.0/8, ::1): then only
    this machine (or this network namespace) can connect. "", 0.0.0.0 and :: are every interface."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP) if host else []
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """The listen socket (port 0: any free one); OSError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without
    # it a response's head and body (two writes) wait 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(sock: socket.socket, open_store: Callable[[], Store], app: Callable[[Store], App],
          limits: Limits, workers: int = 1) -> int:
    """Serve on `sock` until SIGTERM; the exit status (0: a clean stop)."""
    if workers == 1:
        return _worker(sock, open_store, app, limits)
    children: dict[int, int] = {}  # pid: worker number
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for sig in _STOP:
        signal.signal(sig, stop)
    started: dict[int, float] = {}
    for n in range(workers):
        children[_fork(n, sock, open_store, app, limits)] = n
        started[n] = time.monotonic()
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        n = children.pop(pid)
        status = status or os.waitstatus_to_exitcode(code)
        if not stopping:  # a worker died on its own: another takes its place (not in a tight loop)
            print(f"softprobe serve: worker {n} exited ({os.waitstatus_to_exitcode(code)}); starting another",
                  file=sys.stderr, flush=True)
            time.sleep(max(0.0, RESTART_AFTER - (time.monotonic() - started[n])))
            if not stopping:
                children[_fork(n, sock, open_store, app, limits)] = n
                started[n] = time.monotonic()
    sock.close()
    return 0 if stopping else status


def _fork(n: int, sock: socket.socket, open_store: Callable[[], Store], app: Callable[[Store], App],
          limits: Limits) -> int:
    pid = os.fork()
    if pid:
        return pid
    for sig in _STOP:
        signal.signal(sig, signal.SIG_DFL)
    code = 1
    try:
        code = _worker(sock, open_store, app, limits)
    except Exception as e:  # a worker's failure is its one line; the parent starts another
        print(f"softprobe serve: worker {n}: {e}", file=sys.stderr, flush=True)
    finally:
        sys.stderr.flush()
        os._exit(code)


def _worker(sock: socket.socket, open_store: Callable[[], Store], app: Callable[[Store], App],
            limits: Limits) -> int:
    store = open_store()
    try:
        cap = connection_cap(limits.max_connections)
        config = uvicorn.Config(
            app(store), http=guarded(limits.timeout, cap), interface="asgi3", lifespan="off", log_config=None,
            access_log=False, proxy_headers=False, timeout_keep_alive=limits.keep_alive, limit_concurrency=cap + 1,
            backlog=limits.backlog, timeout_graceful_shutdown=int(limits.grace), server_header=False)
        _Server(config).run(sockets=[sock])
    finally:
        store.close()
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, whose stop on a signal is the end: it does not raise the signal again
    once stopped (uvicorn's does, which would kill the process before its store is closed)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
