"""`softprobe case export|import`: recordings out of the store as Softprobe case files (to keep
in a repository, for `softprobe suite init` and `suite run`, or for other Softprobe tools), and
into it from them, so that lookups and `softprobe replay` answer from them. One session goes to a
file or stdout; several (or `--all`) go into a directory, a file per session."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import Settings, already, browse, find_session, read_case, write_json
from softprobe_gateway.formats.casefile import profile_warnings
from softprobe_gateway.store.captures import recorded_case
from softprobe_gateway.store.store import Store, describe


def register(commands: argparse._SubParsersAction, store_options: argparse.ArgumentParser) -> None:
    about = "Softprobe case files (*.case.json) out of and into the store"
    group = commands.add_parser("case", help=about, description=about)
    actions = group.add_subparsers(required=True, metavar="ACTION")

    export = actions.add_parser("export", parents=[store_options],
                                help="write sessions as case files: one to a file, several into a directory")
    export.add_argument("session_id", nargs="*", metavar="SESSION", help="session ids, or the start of them")
    export.add_argument("--all", action="store_true", help="every recorded session (-o DIRECTORY)")
    export.add_argument("-o", "--output", help="file to write (default: stdout); the directory for several "
                                               "sessions, SESSION.case.json in it each")
    export.add_argument("--case-id", help="the case's caseId (default: the session id)")
    export.set_defaults(command=cmd_export)

    load = actions.add_parser("import", parents=[store_options], help="load case files into the store")
    load.add_argument("files", nargs="+", metavar="FILE", help="the *.case.json files to load")
    load.set_defaults(command=cmd_import)


def cmd_export(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.all or len(args.session_id) > 1 or (args.output and Path(args.output).is_dir()):
        return _export_many(args, settings, out)
    if len(args.session_id) != 1:
        raise envelope.CliError("case export: name a session (several, or --all, with -o DIRECTORY)",
                                envelope.EXIT_USAGE)
    case, recorded, left_out = _case(settings, args.session_id[0], args.case_id)
    write_json(case, args.output, out)
    envelope.report(out, caseId=case["caseId"], traceCount=len(case["traces"]), exchanges=recorded,
                    leftOut=left_out, **({"outputPath": args.output} if args.output else {"case": case}))
    if args.output:
        print(_written(args.output, case, recorded, left_out), file=out)
    return 0


def _export_many(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Each session into `-o DIRECTORY` as `<session id>.case.json` (the id made a safe file name):
    recording in the mesh, `case export --all -o cases/`, `suite init` and `suite run` are the
    whole way to a first suite. A session with nothing recorded (all answered by the gateway) is
    left out."""
    if not args.output or (Path(args.output).exists() and not Path(args.output).is_dir()):
        raise envelope.CliError("case export: several sessions go into a directory: -o DIRECTORY", envelope.EXIT_USAGE)
    if args.case_id or (args.all and args.session_id):
        raise envelope.CliError("case export: --case-id names one session's case; --all takes no SESSION",
                                envelope.EXIT_USAGE)
    target = Path(args.output)
    target.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    names: set[str] = set()
    for prefix in args.session_id or _every_session(settings):
        case, recorded, left_out = _case(settings, prefix, "")
        if not recorded:
            print(f"softprobe: case export: session {case['caseId']}: nothing recorded "
                  f"({left_out} answered by the gateway): left out", file=sys.stderr)
            continue
        path = target / _file_name(case["caseId"], names)
        write_json(case, str(path), out)
        print(_written(str(path), case, recorded, left_out), file=out)
        written.append({"caseId": case["caseId"], "outputPath": str(path), "exchanges": recorded, "leftOut": left_out})
    if not written:
        print(f"no sessions recorded in {describe(settings.store)}", file=out)
    envelope.report(out, cases=written, outputPath=str(target))
    return 0


def _case(settings: Settings, prefix: str, case_id: str | None) -> tuple[dict[str, Any], int, int]:
    """A session's case, with how many exchanges it holds and how many were left out."""
    summary, exchanges = find_session(settings.store, prefix)
    case, left_out = recorded_case(case_id or summary.id, exchanges, datetime.now(timezone.utc))
    for warning in profile_warnings(case):
        print(f"softprobe: warning: case {case['caseId']}: {warning}", file=sys.stderr)
    return case, len(exchanges) - left_out, left_out


def _written(path: str, case: dict[str, Any], recorded: int, left_out: int) -> str:
    return (f"{path}: case {case['caseId']}, {recorded} exchanges in {len(case['traces'])} traces"
            + (f" ({left_out} answered by the gateway left out)" if left_out else ""))


def _every_session(settings: Settings) -> list[str]:
    """Every recorded session's id, most recently active first."""
    ids, cursor = [], ""
    with browse(settings.store) as store:
        while True:
            page = store.sessions(size=100, cursor=cursor)
            ids += [s.id for s in page.sessions]
            if not (cursor := page.next_cursor):
                return ids


def _file_name(session_id: str, taken: set[str]) -> str:
    """A file name for a session's case: a session id comes from a request header, so anything but
    letters, digits, `.`, `_` and `-` is replaced (no `/`, no `..`), and a name is never reused."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", session_id).lstrip(".")[:200] or "session"
    name, n = f"{stem}.case.json", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.case.json"
    taken.add(name)
    return name


def cmd_import(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Every file is read and checked before the first is stored: a bad file imports nothing."""
    loaded = [(path, read_case(path)) for path in args.files]
    imported = []
    envelope.report(out, files=imported)
    with Store(settings.store) as store:
        for path, exchanges in loaded:
            added = store.add(exchanges)
            imported.append({"path": path, "exchanges": len(exchanges), "imported": added,
                             "sessions": sorted({ex.session_id for ex in exchanges})})
            sessions = ", ".join(sorted({ex.session_id for ex in exchanges})) or "none"
            print(f"{path}: {added} exchanges imported into {describe(settings.store)}"
                  f"{already(len(exchanges), added)}; sessions: {sessions}", file=out)
    return 0
