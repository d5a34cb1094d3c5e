"""`softprobe`: browse what the gateway recorded, export it, and serve the store over HTTP.

The store is `--db`, else `store.path` of the config file (`--config`, else $SOFTPROBE_CONFIG),
else ./softprobe.db: the same file the gateway records into with the same config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from . import cases, replay
from .backend.casefile import CaseError
from .backend.har import HarError, har
from .backend.model import Exchange, SessionSummary
from .backend.server import loopback_only, serve
from .backend.store import Store, StoreError
from .config import CONFIG_ENV, PUBLIC_KEY_ENV, ConfigError, StoreConfig, load_config

PREVIEW = 100  # characters of a body shown by `show`


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _store_config(args)
        return args.command(args, config, sys.stdout)
    except (ConfigError, StoreError, CaseError, HarError) as e:
        print(f"softprobe: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprobe", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="the SQLite store (default: store.path of the config)")
    common.add_argument("--config", help=f"gateway config YAML (default: ${CONFIG_ENV})")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    sessions = commands.add_parser("sessions", parents=[common], help="list recorded sessions")
    sessions.add_argument("--limit", type=int, default=20, help="how many (newest first, max 100)")
    sessions.add_argument("--service", default="", help="only sessions of this service")
    sessions.set_defaults(command=cmd_sessions)

    show = commands.add_parser("show", parents=[common], help="one session as a timeline")
    show.add_argument("session_id", metavar="ID")
    show.set_defaults(command=cmd_show)

    export = commands.add_parser("har", parents=[common], help="export one session as HAR 1.2 "
                                 "(`har import FILE...`: load HAR files as sessions)")
    export.add_argument("session_id", metavar="ID|import")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    cases.add_har_import_arguments(export)
    export.set_defaults(command=cmd_har)

    misses = commands.add_parser("misses", parents=[common],
                                 help="recent lookups nothing answered, and why")
    misses.add_argument("--limit", type=int, default=20)
    misses.set_defaults(command=cmd_misses)

    server = commands.add_parser("serve", parents=[common], help="serve the store over HTTP")
    server.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT")
    server.add_argument("--key-file", metavar="FILE",
                        help=f"the key every request must present (default: ${PUBLIC_KEY_ENV}); "
                             "required beyond loopback")
    server.set_defaults(command=cmd_serve)

    cases.register(commands, common)
    replay.register(commands, common)
    return parser


def _store_config(args: argparse.Namespace) -> StoreConfig:
    config_path = args.config or os.environ.get(CONFIG_ENV) or None
    config = load_config(config_path)
    store = config.store_config if config.backend_kind == "store" else config.store
    return dataclasses.replace(store, path=args.db) if args.db else store


# -- commands -------------------------------------------------------------------------------


def cmd_sessions(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    with _open(config) as store:
        page = store.sessions(size=args.limit, service=args.service)
    if not page.sessions:
        print(f"no sessions recorded in {config.path}", file=out)
        return 0
    rows = [("SESSION", "SERVICE", "FIRST", "LAST", "EXCHANGES", "ERRORS")]
    rows += [(s.id, s.service, _time(s.first_ns), _time(s.last_ns), str(s.exchanges), str(s.errors))
             for s in page.sessions]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    return 0


def _session(config: StoreConfig, session_id: str):
    """One recorded session and its exchanges; StoreError when there is none."""
    with _open(config) as store:
        summary, exchanges = store.session(session_id)
    if summary is None:
        raise StoreError(f"no session {session_id!r} in {config.path}")
    return summary, exchanges


def cmd_show(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    print(_timeline(*_session(config, args.session_id)), file=out)
    return 0


def cmd_har(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    if args.session_id == "import":
        return cases.cmd_har_import(args, config, out)
    _, exchanges = _session(config, args.session_id)
    text = json.dumps(har(exchanges), indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text, file=out)
    return 0


def cmd_misses(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    with _open(config) as store:
        misses = store.misses(args.limit)
    if not misses:
        print("no lookup misses recorded", file=out)
    for miss in misses:
        print(f"{_time(miss.at_ns)}  {miss.method} {miss.host}{miss.path}  session {miss.session_id}",
              file=out)
        print(f"  closest: {miss.closest or '-'}", file=out)
        for line in miss.diff:
            print(f"    {line}", file=out)
    return 0


def cmd_serve(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen: expected HOST:PORT, got {args.listen!r}")
    key = _serve_key(args.key_file)
    host = host.strip("[]")
    if not key and not loopback_only(host):
        raise ConfigError(f"--listen {args.listen} is beyond loopback: every recorded body would be open "
                          f"to anyone who reaches it; set ${PUBLIC_KEY_ENV} or --key-file")
    store = Store(config)
    try:
        server = serve(store, host, int(port), key)
    except OSError as e:
        store.close()
        raise StoreError(f"cannot listen on {args.listen}: {e.strerror or e}") from None
    # SIGTERM (docker stop, kubectl) shuts down like Ctrl-C: the store is closed cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    bound_host, bound_port = server.server_address[:2]
    print(f"softprobe backend on http://{bound_host}:{bound_port}, store {config.path}, "
          f"{'key required' if key else 'no key (loopback only)'}", file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0


def _serve_key(key_file: str | None) -> str:
    """The key `serve` requires: the file's content (a mounted Secret), else the environment's."""
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"--key-file: cannot read {key_file}: {e.strerror or e}") from None
        if not key:
            raise ConfigError(f"--key-file: {key_file} is empty")
    else:
        key = os.environ.get(PUBLIC_KEY_ENV, "").strip()
    if key and not (key.isascii() and key.isprintable()):
        raise ConfigError("the serve key must be printable ASCII (it travels in an HTTP header)")
    return key


def _open(config: StoreConfig) -> Store:
    """Browsing opens the store read-only: a running gateway may be writing to it."""
    return Store(config, read_only=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# -- formatting -----------------------------------------------------------------------------


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="milliseconds")


def _timeline(summary: SessionSummary, exchanges: list[Exchange]) -> str:
    lines = [f"session {summary.id}  service {summary.service}  {summary.exchanges} exchanges, "
             f"{summary.errors} errors  {_time(summary.first_ns)} .. {_time(summary.last_ns)}"]
    for ex in exchanges:
        offset = (ex.start_ns - summary.first_ns) / 1e9
        flag = "  ERROR" if ex.error else ""
        if ex.answered_by:  # not a recording: never replayed
            flag += f"  [answered by the gateway: {ex.answered_by}]"
        lines.append(f"  {f'+{offset:.3f}s':>10}  {ex.direction or '-':8} {ex.method} {ex.host}{ex.path}  "
                     f"-> {ex.status or 'failed'}  {ex.duration_ms:.1f} ms{flag}")
        for label, body in (("request", ex.request_body), ("response", ex.response_body)):
            if body:
                preview = body if len(body) <= PREVIEW else body[:PREVIEW] + f"... ({len(body)} chars)"
                lines.append(f"      {label}: {preview!r}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
