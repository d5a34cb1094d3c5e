"""`softprobe har export|import`: a recorded session out as HAR 1.2 (to open in a browser's
devtools), and browser HAR files in as sessions, so that lookups and `softprobe replay` answer
from what a browser saw."""

from __future__ import annotations

import argparse
import hashlib
from typing import TextIO

from softprobe_gateway.capture.encoding import Capture
from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import Settings, already, find_session, read_json, write_json
from softprobe_gateway.decisions.tracecontext import RUN_SEPARATOR
from softprobe_gateway.formats.har import HarError, har, har_session, har_traces
from softprobe_gateway.store.store import Store, describe


def register(commands: argparse._SubParsersAction, store_options: argparse.ArgumentParser) -> None:
    about = "HAR 1.2 files (browser devtools) out of and into the store"
    group = commands.add_parser("har", help=about, description=about)
    actions = group.add_subparsers(required=True, metavar="ACTION")

    export = actions.add_parser("export", parents=[store_options], help="write one session as HAR 1.2")
    export.add_argument("session_id", metavar="SESSION", help="a session id, or the start of one")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    export.set_defaults(command=cmd_export)

    load = actions.add_parser("import", parents=[store_options], help="load HAR files as sessions")
    load.add_argument("files", nargs="+", metavar="FILE", help="the HAR files to load")
    load.add_argument("--session", type=recording_session, help="the session id (default: the one a file `har export` wrote "
                                        "names, else har- and the file's digest)")
    load.add_argument("--direction", choices=("inbound", "outbound"),
                      help="inbound (requests to replay against a service) or outbound (answers "
                           "for lookups) for every entry (default: as `har export` marked each, "
                           "else inbound)")
    load.add_argument("--service", help="the service name (default: as `har export` marked each "
                                        "entry, else its request's host)")
    load.add_argument("--all", action="store_true", help="keep static resources and framework internals too")
    load.set_defaults(command=cmd_import)


def recording_session(value: str) -> str:
    """`--session`'s type: a `~` names a replay run (`<recorded>~<run>`), which `softprobe sessions`
    leaves out and `softprobe runs` lists, so an imported recording's id holds none."""
    if RUN_SEPARATOR in value:
        raise argparse.ArgumentTypeError(f"{value[:256]!r}: a `~` in a session id names a replay run "
                                         "(<recorded>~<run>); a recording's id must not contain one")
    return value


def cmd_export(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    _, exchanges = find_session(settings.store, args.session_id)
    document = har(exchanges)
    write_json(document, args.output, out)
    envelope.report(out, entries=len(document["log"]["entries"]),
                    **({"outputPath": args.output} if args.output else {"har": document}))
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Each file goes through the config's capture and redaction rules, as live traffic would."""
    capture = Capture(settings.config.capture, settings.config.redaction)
    imported = []
    envelope.report(out, files=imported)
    with Store(settings.store) as store:
        for path in args.files:
            try:
                raw, document = read_json(path, HarError)
                session = (args.session or har_session(document)
                           or f"har-{hashlib.sha256(raw).hexdigest()[:12]}")
                traces, kept, skipped = har_traces(document, capture, session, args.direction,
                                                   args.service, keep_all=args.all)
            except HarError as e:
                raise HarError(f"{path}: {e}") from None
            added = store.ingest(traces)
            imported.append({"path": path, "sessionId": session, "imported": added, "skipped": skipped})
            print(f"{path}: {added} exchanges imported into {describe(settings.store)} as session {session}"
                  f"{already(kept, added)}" + (f"; {skipped} entries skipped (static resources, "
                                               "framework internals, failed requests)" if skipped else ""),
                  file=out)
    return 0
