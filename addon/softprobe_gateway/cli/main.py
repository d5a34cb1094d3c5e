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
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from softprobe_gateway import __version__
from softprobe_gateway.cli import ca, cases, replay
from softprobe_gateway.config.loader import CONFIG_ENV, load_config
from softprobe_gateway.config.schema import PUBLIC_KEY_ENV, ConfigError, StoreConfig
from softprobe_gateway.formats.casefile import CaseError
from softprobe_gateway.formats.har import HarError, body_bytes, har, readable
from softprobe_gateway.store.model import Exchange, Fields, SessionSummary
from softprobe_gateway.store.server import loopback_only, serve
from softprobe_gateway.store.store import Store, StoreError

PREVIEW = 100  # characters of a body shown by `show`
DEFAULT_ADMIN = "127.0.0.1:9090"  # the shipped config's admin_listen (`make run`)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _store_config(args) if "db" in args else None  # `ca` needs no store
        return args.command(args, config, sys.stdout)
    except (ConfigError, StoreError, CaseError, HarError) as e:
        print(f"softprobe: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file named on the command line (`har -o`)
        print(f"softprobe: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprobe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"softprobe {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="the SQLite store (default: store.path of the config)")
    common.add_argument("--config", help=f"gateway config YAML (default: ${CONFIG_ENV})")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    sessions = commands.add_parser("sessions", parents=[common], help="list recorded sessions")
    sessions.add_argument("--limit", type=_count, default=20, help="how many (newest first, max 100)")
    sessions.add_argument("--service", default="", help="only sessions of this service")
    sessions.set_defaults(command=cmd_sessions)

    show = commands.add_parser("show", parents=[common],
                               help="a session as a timeline, or one exchange in full")
    show.add_argument("session_id", metavar="ID", help="a session id or an exchange id, or the start of one")
    show.set_defaults(command=cmd_show)

    export = commands.add_parser("har", parents=[common], help="export one session as HAR 1.2 "
                                 "(`har import FILE...`: load HAR files as sessions)")
    export.add_argument("session_id", metavar="ID|import", help="a session id, or the start of one")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    cases.add_har_import_arguments(export)
    export.set_defaults(command=cmd_har)

    misses = commands.add_parser("misses", parents=[common],
                                 help="recent lookups nothing answered, and why")
    misses.add_argument("--limit", type=_count, default=20)
    misses.set_defaults(command=cmd_misses)

    server = commands.add_parser("serve", parents=[common], help="serve the store over HTTP")
    server.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT")
    server.add_argument("--key-file", metavar="FILE",
                        help=f"the key every request must present (default: ${PUBLIC_KEY_ENV}); "
                             "required beyond loopback")
    server.set_defaults(command=cmd_serve)

    cases.register(commands, common, _session)
    replay.register(commands, common, _session)
    ca.register(commands)
    return parser


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _store_config(args: argparse.Namespace) -> StoreConfig:
    config_path = args.config or os.environ.get(CONFIG_ENV) or None
    config = load_config(config_path)
    store = config.store_config if config.backend_kind == "store" else config.store
    return dataclasses.replace(store, path=args.db) if args.db else store


# -- commands -------------------------------------------------------------------------------


def cmd_sessions(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    if args.limit == 0:
        return 0
    with _open(config) as store:
        page = store.sessions(size=args.limit, service=args.service)
    if not page.sessions:
        print(f"no sessions recorded in {config.path}", file=out)
        if skipped := gateway_skips(_admin_address(args)):
            print(skipped, file=out)
        return 0
    rows = [("SESSION", "SERVICE", "FIRST", "LAST", "EXCHANGES", "ERRORS")]
    rows += [(s.id, s.service, _time(s.first_ns), _time(s.last_ns), str(s.exchanges), str(s.errors))
             for s in page.sessions]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    return 0


def _resolve(store: Store, prefix: str, kinds: tuple[str, ...]) -> tuple[str, str]:
    """The one session or exchange an id, or the start of one, names; StoreError otherwise."""
    found = [(kind, id) for kind, id in store.find(prefix) if kind in kinds]
    what = " or ".join(kinds)
    if not found:
        raise StoreError(f"no {what} {prefix!r} in {store.path}")
    if len(found) > 1:
        names = ", ".join(f"{kind} {id}" for kind, id in found)
        raise StoreError(f"{prefix!r} is ambiguous: it starts {names}; give more of the id")
    return found[0]


def _session(config: StoreConfig, prefix: str):
    """One recorded session (by id or id prefix) and its exchanges; StoreError when there is none."""
    with _open(config) as store:
        _, session_id = _resolve(store, prefix, ("session",))
        summary, exchanges = store.session(session_id)
    return summary, exchanges


def cmd_show(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    with _open(config) as store:
        kind, id = _resolve(store, args.session_id, ("session", "exchange"))
        if kind == "exchange":
            print(_exchange(store.exchange(id)), file=out)
            return 0
        print(_timeline(*store.session(id)), file=out)
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


def _admin_address(args: argparse.Namespace) -> str:
    config = load_config(args.config or os.environ.get(CONFIG_ENV) or None)
    return config.admin_listen or DEFAULT_ADMIN


def gateway_skips(address: str) -> str:
    """What the gateway at `address` (its admin port) saw and did not record, by reason, as one
    line; "" when none answers there or it skipped nothing."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(f"http://{address}/metrics", timeout=0.5) as response:
            text = response.read(1 << 20).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    seen, skipped = 0, {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "softprobe_exchanges_seen_total":
            seen = int(float(value))
        elif name.startswith('softprobe_exchanges_skipped_total{reason="'):
            skipped[name.split('"')[1]] = int(float(value))
    if not sum(skipped.values()):
        return ""
    reasons = ", ".join(f"{reason} {count}" for reason, count in skipped.items() if count)
    return (f"the gateway at {address} saw {seen} exchanges and did not record "
            f"{sum(skipped.values())}: {reasons} (its log says why, once per reason; "
            "docs/protocol.md, 'What is recorded')")


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
        lines.append(f"  {f'+{offset:.3f}s':>10}  {ex.span_id[:8]}  {ex.direction or '-':8} {ex.method} "
                     f"{ex.host}{ex.path}  -> {_outcome(ex)}")
        for label, body, headers, original in _bodies(ex):
            text = _body_text(body, headers, original, PREVIEW)
            if text:
                lines.append(f"      {label}: {text}")
    return "\n".join(lines)


def _exchange(ex: Exchange) -> str:
    """One exchange in full: request and response, headers and whole bodies."""
    lines = [f"exchange {ex.span_id}  session {ex.session_id}  service {ex.service}  {ex.direction or '-'}",
             f"{_time(ex.start_ns)}  {ex.method} {ex.host}{ex.path}  -> {_outcome(ex)}"]
    for (label, body, headers, original), prefix in zip(_bodies(ex), ("> ", "< ")):
        lines.append(f"{label}:")
        lines += [f"  {prefix}{name}: {value}" for name, value in headers]
        if text := _body_text(body, headers, original, None):
            lines.append(f"  {text}")
    if ex.response_trailers:
        lines.append("trailers:")
        lines += [f"  < {name}: {value}" for name, value in ex.response_trailers]
    return "\n".join(lines)


def _outcome(ex: Exchange) -> str:
    """The status, or why the exchange failed (the span's `error.message`), its duration, and
    flags: an error, an answer from the gateway itself (not a recording: never replayed)."""
    status = str(ex.status) if ex.status else f"failed ({ex.error_message or 'no response'})"
    flags = "  ERROR" if ex.error else ""
    if ex.answered_by:
        flags += f"  [answered by the gateway: {ex.answered_by}]"
    return f"{status}  {ex.duration_ms:.1f} ms{flags}"


def _bodies(ex: Exchange) -> tuple[tuple[str, str, Fields, int], ...]:
    return (("request", ex.request_body, ex.request_headers, ex.request_original_size),
            ("response", ex.response_body, ex.response_headers, ex.response_original_size))


def _body_text(body: str, headers: Fields, original_size: int, limit: int | None) -> str:
    """A body as text when it is text (even recorded as base64), else as its base64, cut at
    `limit` characters; marked when the gateway cut it at capture.max_body_bytes."""
    raw = body_bytes(body, headers)
    text = readable(body, raw, headers)
    shown = repr(text) if text is not None else f"base64 {body!r}"
    if text is not None and limit and len(text) > limit:
        shown = f"{text[:limit]!r}... ({len(text)} chars)"
    elif text is None and limit and len(body) > limit:
        shown = f"base64 {body[:limit]!r}... ({len(raw)} bytes)"
    if original_size:
        shown = f"{shown if body else ''} [truncated: {len(raw)} of {original_size} bytes recorded]".strip()
    return shown if body or original_size else ""


if __name__ == "__main__":
    sys.exit(main())
