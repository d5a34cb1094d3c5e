"""`softprobe sessions`, `runs`, `show` and `misses`: what the gateway recorded, what it answered
replay runs (`SESSION~RUN`, listed apart from the recordings) and what it could not answer, read
from the store without writing to it (a running gateway may be recording)."""

from __future__ import annotations

import argparse
import urllib.request
from dataclasses import asdict
from typing import TextIO

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import NotFound, Settings, browse, resolve
from softprobe_gateway.cli.timeline import exchange, nest, time_text, timeline
from softprobe_gateway.decisions.tracecontext import own_sessions
from softprobe_gateway.store.store import describe

DEFAULT_ADMIN = "127.0.0.1:9090"  # the shipped config's admin_listen (`make run`)


def register(commands: argparse._SubParsersAction, store_options: argparse.ArgumentParser) -> None:
    sessions = commands.add_parser("sessions", parents=[store_options],
                                   help="list recorded sessions (replay runs: softprobe runs)")
    sessions.add_argument("--limit", type=_count, default=20, help="how many (newest first, max 100)")
    sessions.add_argument("--service", default="", help="only sessions of this service")
    sessions.set_defaults(command=cmd_sessions)

    runs = commands.add_parser("runs", parents=[store_options],
                               help="list replay runs (SESSION~RUN) and whether each passed")
    runs.add_argument("session_id", metavar="SESSION", nargs="?", default="",
                      help="only the runs of this recorded session (or the start of its id)")
    runs.add_argument("--limit", type=_count, default=20, help="how many (newest first, max 100)")
    runs.set_defaults(command=cmd_runs)

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
        page = store.sessions(size=args.limit, service=args.service, runs=False)
        hidden = store.count_runs(service=args.service)
    envelope.report(out, sessions=[asdict(s) for s in page.sessions], runsHidden=hidden)
    runs_note = (f"{hidden} replay {'run is' if hidden == 1 else 'runs are'} not listed here: "
                 "softprobe runs [SESSION]")
    if not page.sessions:
        print(f"no sessions recorded in {describe(settings.store)}", file=out)
        if hidden:
            print(runs_note, file=out)
        elif skipped := gateway_skips(settings.config.admin_listen or DEFAULT_ADMIN):
            print(skipped, file=out)
        return 0
    _table(out, [("SESSION", "SERVICE", "FIRST", "LAST", "EXCHANGES", "ERRORS")]
           + [(s.id, s.service, time_text(s.first_ns), time_text(s.last_ns), str(s.exchanges), str(s.errors))
              for s in page.sessions])
    if hidden:
        print(f"({runs_note})", file=out)
    return 0


def cmd_runs(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """A run passed when the gateway answered every lookup of it from the recording (no refusal,
    no miss) and none of its exchanges failed: what the store keeps of a run. `softprobe replay`'s
    own comparison of the answers is its exit status and `--junit` file, not stored."""
    envelope.report(out, runs=[])
    if args.limit == 0:
        return 0
    with browse(settings.store) as store:
        recorded = args.session_id
        if recorded:
            try:
                recorded = resolve(store, recorded, ("session",))[1]
            except NotFound:  # the recording may be gone and its runs kept: the id as given
                pass
            recorded = own_sessions(recorded)[-1]  # a run's id: the runs of its recording
        runs = store.runs(recorded, args.limit)
    envelope.report(out, runs=[{**asdict(run), "passed": run.passed} for run in runs])
    if not runs:
        print(f"no replay runs{f' of {recorded}' if recorded else ''} in {describe(settings.store)}", file=out)
        return 0
    _table(out, [("RUN", "SERVICE", "FIRST", "LAST", "EXCHANGES", "ANSWERED", "REFUSED", "MISSES", "ERRORS",
                  "RESULT")]
           + [(r.id, r.service, time_text(r.first_ns), time_text(r.last_ns), str(r.exchanges), str(r.answered),
               str(r.refused), str(r.misses), str(r.errors), "pass" if r.passed else "FAIL") for r in runs])
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with browse(settings.store) as store:
        kind, id = resolve(store, args.session_id, ("session", "exchange"))
        if kind == "exchange":
            found = store.exchange(id)
            if found is None:  # pruned since `find` named it
                raise NotFound(f"no exchange {args.session_id!r} in {store.name}")
            text = exchange(found)
            envelope.report(out, kind=kind, exchange=asdict(found))
        else:
            summary, exchanges = store.session(id)
            if summary is None:  # pruned since `find` named it
                raise NotFound(f"no session {args.session_id!r} in {store.name}")
            text = timeline(summary, exchanges)
            if envelope.wanted(out):  # a session may hold 10,000 exchanges: their fields only for --json
                envelope.report(out, kind=kind, session=asdict(summary), exchanges=[
                    {**asdict(ex), "parent": parent or None, "depth": depth} for depth, ex, parent in nest(exchanges)])
    print(text, file=out)
    return 0


def cmd_misses(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with browse(settings.store) as store:
        misses = store.misses(args.limit)
    envelope.report(out, misses=[asdict(miss) for miss in misses])
    if not misses:
        print("no lookup misses recorded", file=out)
    for miss in misses:
        print(f"{time_text(miss.at_ns)}  {miss.method} {miss.host}{miss.path}  session {miss.session_id}",
              file=out)
        closest = " ".join(part for part in (miss.closest_exchange[:8], miss.closest) if part)
        print(f"  closest: {closest or '-'}", file=out)
        for line in miss.diff:
            print(f"    {line}", file=out)
    return 0


def _table(out: TextIO, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)


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
