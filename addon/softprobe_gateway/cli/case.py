"""`softprobe case export|import`: recordings out of the store as Softprobe case files (to keep
in a repository, or for other Softprobe tools), and into it from them, so that lookups and
`softprobe replay` answer from them."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from typing import TextIO

from softprobe_gateway.cli.common import Settings, already, find_session, read_case, write_json
from softprobe_gateway.formats.casefile import profile_warnings
from softprobe_gateway.store.captures import recorded_case
from softprobe_gateway.store.store import Store


def register(commands: argparse._SubParsersAction, store_options: argparse.ArgumentParser) -> None:
    about = "Softprobe case files (*.case.json) out of and into the store"
    group = commands.add_parser("case", help=about, description=about)
    actions = group.add_subparsers(required=True, metavar="ACTION")

    export = actions.add_parser("export", parents=[store_options], help="write one session as a case file")
    export.add_argument("session_id", metavar="SESSION", help="a session id, or the start of one")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    export.add_argument("--case-id", help="the case's caseId (default: the session id)")
    export.set_defaults(command=cmd_export)

    load = actions.add_parser("import", parents=[store_options], help="load case files into the store")
    load.add_argument("files", nargs="+", metavar="FILE", help="the *.case.json files to load")
    load.set_defaults(command=cmd_import)


def cmd_export(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    summary, exchanges = find_session(settings.store, args.session_id)
    case, left_out = recorded_case(args.case_id or summary.id, exchanges, datetime.now(timezone.utc))
    for warning in profile_warnings(case):
        print(f"softprobe: warning: case {case['caseId']}: {warning}", file=sys.stderr)
    write_json(case, args.output, out)
    if args.output:
        recorded = len(exchanges) - left_out
        print(f"{args.output}: case {case['caseId']}, {recorded} exchanges in {len(case['traces'])} "
              f"traces" + (f" ({left_out} answered by the gateway left out)" if left_out else ""), file=out)
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Every file is read and checked before the first is stored: a bad file imports nothing."""
    loaded = [(path, read_case(path)) for path in args.files]
    with Store(settings.store) as store:
        for path, exchanges in loaded:
            added = store.add(exchanges)
            sessions = ", ".join(sorted({ex.session_id for ex in exchanges})) or "none"
            print(f"{path}: {added} exchanges imported into {settings.store.path}"
                  f"{already(len(exchanges), added)}; sessions: {sessions}", file=out)
    return 0
