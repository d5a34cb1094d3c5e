"""`softprobe sessions`, `show` and `misses`: what the gateway recorded and what it could not
answer, read from the store without writing to it (a running gateway may be recording)."""

from __future__ import annotations

import argparse
import urllib.request
from dataclasses import asdict
from datetime import datetime
from typing import TextIO

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import Settings, browse, resolve
from softprobe_gateway.formats.har import body_bytes, readable
from softprobe_gateway.store.model import Fields, Recording, SessionSummary
from softprobe_gateway.store.store import describe

PREVIEW = 100  # characters of a body shown by `show`
DEFAULT_ADMIN = "127.0.0.1:9090"  # the shipped config's admin_listen (`make run`)


def register(commands: argparse._SubParsersAction, store_options: argparse.ArgumentParser) -> None:
    sessions = commands.add_parser("sessions", parents=[store_options], help="list recorded sessions")
    sessions.add_argument("--limit", type=_count, default=20, help="how many (newest first, max 100)")
    sessions.add_argument("--service", default="", help="only sessions of this service")
    sessions.set_defaults(command=cmd_sessions)

    show = commands.add_parser("show", parents=[store_options],
                               help="a session as a timeline, or one exchange in full")
    show.add_argument("session_id", metavar="ID", help="a session id or an exchange id, or the start of one")
    show.set_defaults(command=cmd_show)

    misses = commands.add_parser("misses", parents=[store_options],
                                 help="recent lookups nothing answered, and why")
    misses.add_argument("--limit", type=_count, default=20)
    misses.set_defaults(command=cmd_misses)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def cmd_sessions(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    envelope.report(out, sessions=[])  # --json: as the read API's fields (GET /api/sessions/{id})
    if args.limit == 0:
        return 0
    with browse(settings.store) as store:
        page = store.sessions(size=args.limit, service=args.service)
    envelope.report(out, sessions=[asdict(s) for s in page.sessions])
    if not page.sessions:
        print(f"no sessions recorded in {describe(settings.store)}", file=out)
        if skipped := gateway_skips(settings.config.admin_listen or DEFAULT_ADMIN):
            print(skipped, file=out)
        return 0
    rows = [("SESSION", "SERVICE", "FIRST", "LAST", "EXCHANGES", "ERRORS")]
    rows += [(s.id, s.service, _time(s.first_ns), _time(s.last_ns), str(s.exchanges), str(s.errors))
             for s in page.sessions]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with browse(settings.store) as store:
        kind, id = resolve(store, args.session_id, ("session", "exchange"))
        text = _exchange(store.exchange(id)) if kind == "exchange" else _timeline(*store.session(id))
        if envelope.wanted(out) and kind == "exchange":
            envelope.report(out, kind=kind, exchange=asdict(store.exchange(id)))
        elif envelope.wanted(out):
            summary, exchanges = store.session(id)
            envelope.report(out, kind=kind, session=asdict(summary), exchanges=[asdict(ex) for ex in exchanges])
    print(text, file=out)
    return 0


def cmd_misses(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with browse(settings.store) as store:
        misses = store.misses(args.limit)
    envelope.report(out, misses=[asdict(miss) for miss in misses])
    if not misses:
        print("no lookup misses recorded", file=out)
    for miss in misses:
        print(f"{_time(miss.at_ns)}  {miss.method} {miss.host}{miss.path}  session {miss.session_id}",
              file=out)
        print(f"  closest: {miss.closest or '-'}", file=out)
        for line in miss.diff:
            print(f"    {line}", file=out)
    return 0


def gateway_skips(address: str) -> str:
    """What the gateway at `address` (its admin port) saw and did not record, by reason, as one
    line; "" when none answers there or it skipped nothing. An empty store is then explained."""
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


# -- formatting -----------------------------------------------------------------------------


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="milliseconds")


def _timeline(summary: SessionSummary, exchanges: list[Recording]) -> str:
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


def _exchange(ex: Recording) -> str:
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


def _outcome(ex: Recording) -> str:
    """The status, or why the exchange failed (the span's `error.message`), its duration, and
    flags: an error, an answer from the gateway itself (not a recording: never replayed)."""
    status = str(ex.status) if ex.status else f"failed ({ex.error_message or 'no response'})"
    flags = "  ERROR" if ex.error else ""
    if ex.answered_by:
        flags += f"  [answered by the gateway: {ex.answered_by}]"
    return f"{status}  {ex.duration_ms:.1f} ms{flags}"


def _bodies(ex: Recording) -> tuple[tuple[str, str, Fields, int], ...]:
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
