"""`softprobe serve`: the store over HTTP, so several gateways (or the original Envoy agent)
record into and answer from one store. Beyond loopback it requires a key: every recorded body
would otherwise be open to anyone who reaches the port."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import Settings
from softprobe_gateway.config.schema import PUBLIC_KEY_ENV, ConfigError
from softprobe_gateway.store.captures import CAPTURE_PATH_ENV, CaptureCases
from softprobe_gateway.store.server import loopback_only, serve
from softprobe_gateway.store.store import Store, StoreError


def register(commands: argparse._SubParsersAction, store_options: argparse.ArgumentParser) -> None:
    server = commands.add_parser("serve", parents=[store_options], help="serve the store over HTTP")
    server.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT")
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
    server.set_defaults(command=cmd_serve)


def cmd_serve(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
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
    store = Store(settings.store)
    try:
        server = serve(store, host, int(port), key, captures)
    except OSError as e:
        store.close()
        raise StoreError(f"cannot listen on {args.listen}: {e.strerror or e}") from None
    # SIGTERM (docker stop, kubectl) shuts down like Ctrl-C: the store is closed cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    bound_host, bound_port = server.server_address[:2]
    envelope.announce(out, sys.stdout, url=f"http://{bound_host}:{bound_port}", store=str(settings.store.path),
                      keyRequired=bool(key))
    print(f"softprobe backend on http://{bound_host}:{bound_port}, store {settings.store.path}, "
          f"{'key required' if key else 'no key (loopback only)'}", file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

