"""`softprobe case export|import` and `softprobe har import`: recordings out of the store as
Softprobe case files, and into it from case files and browser HAR files, so that lookups (and
`softprobe replay`) answer from them."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from softprobe_gateway.capture.encoding import Capture
from softprobe_gateway.config.loader import CONFIG_ENV, load_config
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.formats.casefile import CaseError, case_document, case_exchanges, profile_warnings
from softprobe_gateway.formats.har import HarError, har_traces
from softprobe_gateway.store.model import Exchange, SessionSummary
from softprobe_gateway.store.store import Store

# The CLI's session lookup (by id or id prefix; StoreError when there is none).
FindSession = Callable[[StoreConfig, str], tuple[SessionSummary, list[Exchange]]]


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser,
             find_session: FindSession) -> None:
    case = commands.add_parser("case", help="Softprobe case files (*.case.json) out of and into the store")
    actions = case.add_subparsers(required=True, metavar="ACTION")
    export = actions.add_parser("export", parents=[common], help="write one session as a case file")
    export.add_argument("session_id", metavar="SESSION_ID")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    export.add_argument("--case-id", help="the case's caseId (default: the session id)")
    export.set_defaults(command=cmd_export, find_session=find_session)
    load = actions.add_parser("import", parents=[common], help="load case files into the store")
    load.add_argument("files", nargs="+", metavar="FILE")
    load.set_defaults(command=cmd_import)


def add_har_import_arguments(har: argparse.ArgumentParser) -> None:
    """Options of `softprobe har import FILE...` (`har` itself exports: `har ID`)."""
    har.add_argument("files", nargs="*", metavar="FILE", help="with `import`: the HAR files to load")
    har.add_argument("--session", help="import: the session id (default: har- and the file's digest)")
    har.add_argument("--direction", choices=("inbound", "outbound"), default="inbound",
                     help="import: inbound (requests to replay against a service, the default) "
                          "or outbound (answers for lookups)")
    har.add_argument("--service", help="import: the service name (default: each request's host)")
    har.add_argument("--all", action="store_true",
                     help="import: keep static resources and framework internals too")


# -- commands -------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    summary, exchanges = args.find_session(config, args.session_id)
    # What the gateway answered itself (hits, mocks, refusals) is no recording of the service.
    recorded = [ex for ex in exchanges if not ex.answered_by]
    case = case_document(args.case_id or summary.id, recorded, datetime.now(timezone.utc))
    for warning in profile_warnings(case):
        print(f"softprobe: warning: case {case['caseId']}: {warning}", file=sys.stderr)
    text = json.dumps(case, indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        left_out = len(exchanges) - len(recorded)
        print(f"{args.output}: case {case['caseId']}, {len(recorded)} exchanges in {len(case['traces'])} "
              f"traces" + (f" ({left_out} answered by the gateway left out)" if left_out else ""), file=out)
    else:
        print(text, file=out)
    return 0


def cmd_import(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    """Every file is read and checked before the first is stored: a bad file imports nothing."""
    loaded = []
    for path in args.files:
        try:
            loaded.append((path, case_exchanges(parse_json(read_bytes(path, CaseError), CaseError))))
        except CaseError as e:
            raise CaseError(f"{path}: {e}") from None
    with Store(config) as store:
        for path, exchanges in loaded:
            added = store.add(exchanges)
            sessions = ", ".join(sorted({ex.session_id for ex in exchanges})) or "none"
            print(f"{path}: {added} exchanges imported into {config.path}{_already(len(exchanges), added)}; "
                  f"sessions: {sessions}", file=out)
    return 0


def cmd_har_import(args: argparse.Namespace, config: StoreConfig, out: TextIO) -> int:
    if not args.files:
        raise HarError("har import: name at least one HAR file")
    capture = _capture(args)
    with Store(config) as store:
        for path in args.files:
            try:
                raw = read_bytes(path, HarError)
                session = args.session or f"har-{hashlib.sha256(raw).hexdigest()[:12]}"
                traces, kept, skipped = har_traces(parse_json(raw, HarError), capture, session,
                                                   args.direction, args.service, keep_all=args.all)
            except HarError as e:
                raise HarError(f"{path}: {e}") from None
            added = store.ingest(traces)
            print(f"{path}: {added} exchanges imported into {config.path} as session {session}"
                  f"{_already(kept, added)}" + (f"; {skipped} entries skipped (static resources, "
                                                "framework internals, failed requests)" if skipped else ""),
                  file=out)
    return 0


def _already(total: int, added: int) -> str:
    return f" ({total - added} were already there)" if total > added else ""


def _capture(args: argparse.Namespace) -> Capture:
    """The config's capture and redaction rules: a HAR is recorded as live traffic would be."""
    config = load_config(args.config or os.environ.get(CONFIG_ENV) or None)
    return Capture(config.capture, config.redaction)


def read_bytes(path: str, error: type[ValueError]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise error(e.strerror or str(e)) from None


def parse_json(raw: bytes, error: type[ValueError]) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:
        raise error(f"not JSON: {e}") from None
