"""`softprobe serve`: the store over HTTP, so several gateways (or the original Envoy agent)
record into and answer from one store. Beyond loopback it requires a key: every recorded body
would otherwise be open to anyone who reaches the port. Several worker processes need the
PostgreSQL store: SQLite's replay positions and its one writer are one process's."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import Settings
from softprobe_gateway.cli.session import RUNTIME_LISTEN
from softprobe_gateway.config.schema import PUBLIC_KEY_ENV, ConfigError
from softprobe_gateway.server.app import App
from softprobe_gateway.server.run import Limits, bind, loopback_only, serve
from softprobe_gateway.store.captures import CAPTURE_PATH_ENV, CaptureCases
from softprobe_gateway.store.store import StoreError, describe, open_store


def register(commands: argparse._SubParsersAction, store_options: argparse.ArgumentParser) -> None:
    server = commands.add_parser("serve", parents=[store_options], help="serve the store over HTTP")
    server.add_argument("--listen", default=RUNTIME_LISTEN, metavar="HOST:PORT")
    server.add_argument("--key-file", metavar="FILE",
                        help=f"the key every request must present (default: ${PUBLIC_KEY_ENV}, else "
                             f"${API_TOKEN_ENV}); "
                             "required beyond loopback")
    server.add_argument("--capture-case-path", metavar="PATH", default=os.environ.get(CAPTURE_PATH_ENV, ""),
                        help="where closing a capture session writes its case, unless the close names "
                             "its own (?out=); {sessionId}, {ts} and {mode} are filled in "
                             f"(default: ${CAPTURE_PATH_ENV}, else none written)")
    server.add_argument("--capture-dir", metavar="DIR", default=".",
                        help="the directory a close's ?out= must name a file in (default: the current "
                             "one): the request comes with the key every gateway holds")
    limits = Limits()
    server.add_argument("--workers", type=int, default=1, metavar="N",
                        help="worker processes sharing the port (default: 1; more need --store postgresql://...)")
    server.add_argument("--keep-alive", type=float, default=limits.keep_alive, metavar="SECONDS",
                        help=f"close a connection idle this long between requests (default: {limits.keep_alive:g})")
    server.add_argument("--timeout", type=float, default=limits.timeout, metavar="SECONDS",
                        help="a request's head, and its body, must arrive within this "
                             f"(default: {limits.timeout:g})")
    server.add_argument("--max-connections", type=int, default=limits.max_connections, metavar="N",
                        help="open connections per worker; beyond it the oldest idle one is closed "
                             f"(default: {limits.max_connections}, lowered to fit the descriptor limit)")
    server.set_defaults(command=cmd_serve)


def cmd_serve(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen: expected HOST:PORT, got {args.listen!r}")
    key = _key(args.key_file)
    host = host.strip("[]")
    if not key and not loopback_only(host):
        raise ConfigError(f"--listen {args.listen} is beyond loopback: every recorded body would be open "
                          f"to anyone who reaches it; set ${PUBLIC_KEY_ENV} or --key-file")
    captures = CaptureCases(args.capture_case_path, Path(args.capture_dir).absolute())
    try:
        captures.path("", "s", datetime.now(timezone.utc))
    except ValueError as e:
        raise ConfigError(f"--capture-case-path: {e}") from None
    if not captures.root.is_dir():
        raise ConfigError(f"--capture-dir: {args.capture_dir} is not a directory")
    limits = _limits(args)
    if args.workers > 1 and not settings.store.url:
        raise ConfigError(f"--workers {args.workers}: the SQLite store is one process's (its replay positions "
                          "and its writer); several workers need --store postgresql://...")
    store = open_store(settings.store)  # once here: a bad store is one line, migrations run once
    try:
        sock = bind(host, int(port), limits.backlog)
    except OSError as e:
        store.close()
        raise StoreError(f"cannot listen on {args.listen}: {e.strerror or e}") from None
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://[{bound_host}]:{bound_port}" if ":" in bound_host else f"http://{bound_host}:{bound_port}"
    envelope.announce(out, sys.stdout, url=url, store=describe(settings.store), keyRequired=bool(key))
    print(f"softprobe backend on {url}, store {describe(settings.store)}, "
          f"{'key required' if key else 'no key (loopback only)'}, {args.workers} worker(s)", file=out, flush=True)
    if args.workers > 1:
        store.close()  # each worker opens its own, after the fork
    opened = (lambda: open_store(settings.store)) if args.workers > 1 else (lambda: store)
    return serve(sock, opened, lambda s: App(s, key, captures, limits.timeout), limits, args.workers)


def _limits(args: argparse.Namespace) -> Limits:
    for flag, value in (("--workers", args.workers), ("--max-connections", args.max_connections)):
        if value < 1:
            raise ConfigError(f"{flag}: at least 1, got {value}")
    for flag, value in (("--keep-alive", args.keep_alive), ("--timeout", args.timeout)):
        if not value > 0:
            raise ConfigError(f"{flag}: a number of seconds above 0, got {value:g}")
    return Limits(keep_alive=args.keep_alive, timeout=args.timeout, max_connections=args.max_connections)


def _key(key_file: str | None) -> str:
    """The key `serve` requires: the file's content (a mounted Secret), else the environment's."""
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"--key-file: cannot read {key_file}: {e.strerror or e}") from None
        if not key:
            raise ConfigError(f"--key-file: {key_file} is empty")
    else:  # Softprobe's runtime reads its token from SOFTPROBE_API_TOKEN, which the CLI sends
        key = (os.environ.get(PUBLIC_KEY_ENV) or os.environ.get(API_TOKEN_ENV, "")).strip()
    if key and not (key.isascii() and key.isprintable()):
        raise ConfigError("the serve key must be printable ASCII (it travels in an HTTP header)")
    return key


API_TOKEN_ENV = "SOFTPROBE_API_TOKEN"

