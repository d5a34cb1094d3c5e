"""`softprobe inspect case FILE` and `inspect session [ID]`: read-only looks at a case file's
recorded exchanges and at a live session on the runtime (its policy, rules, loaded case and
counters), as Softprobe's CLI reference describes them."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, TextIO

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import read_json
from softprobe_gateway.cli.session import Runtime, runtime_options
from softprobe_gateway.formats.casefile import CaseError, case_exchanges
from softprobe_gateway.store.model import Recording


def register(commands: argparse._SubParsersAction) -> None:
    about = "read-only looks at a case file or a live session"
    actions = commands.add_parser("inspect", help=about, description=about).add_subparsers(
        required=True, metavar="WHAT")
    case = actions.add_parser("case", help="a case file's spans: direction, method, URL, status, body size")
    case.add_argument("file", metavar="FILE", help="a *.case.json file")
    case.set_defaults(command=cmd_case)
    session = actions.add_parser("session", parents=[runtime_options()],
                                 help="a live session's policy, rules, loaded case and counters")
    session.add_argument("session_id", nargs="?", metavar="ID", help="the session (or --session)")
    session.add_argument("--session", dest="session_flag", metavar="ID",
                         default=os.environ.get("SOFTPROBE_SESSION_ID"),
                         help="the session id (default: $SOFTPROBE_SESSION_ID)")
    session.set_defaults(command=cmd_session)


def span_summary(ex: Recording) -> dict[str, Any]:
    return {"direction": ex.direction, "method": ex.method, "host": ex.host, "path": ex.path,
            "status": ex.status, "spanId": ex.span_id, "traceId": ex.trace_id, "sessionId": ex.session_id,
            "requestBytes": len(ex.request_body), "responseBytes": len(ex.response_body)}


def cmd_case(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    _, document = read_json(args.file, CaseError)
    try:
        exchanges = case_exchanges(document)
    except CaseError as e:
        raise CaseError(f"{args.file}: {e}") from None
    exchanges.sort(key=lambda ex: ex.start_ns)
    summary = [span_summary(ex) for ex in exchanges]
    envelope.report(out, caseId=str(document.get("caseId", "")), version=str(document.get("version", "")),
                    traceCount=len(document["traces"]), spanSummary=summary)
    print(f"case {document.get('caseId', '')}  version {document.get('version', '-')}  "
          f"{len(document['traces'])} traces, {len(summary)} spans", file=out)
    rows = [("DIRECTION", "METHOD", "URL", "STATUS", "BODY")]
    rows += [(s["direction"] or "-", s["method"], f"{s['host']}{s['path']}", str(s["status"] or "-"),
              f"{s['responseBytes']} B") for s in summary]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    return envelope.EXIT_OK


def cmd_session(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    """The runtime's `GET /v1/sessions/{id}/state`; fixtures are counted, not shown (they hold credentials)."""
    session_id = args.session_id or args.session_flag
    if not session_id:
        raise envelope.CliError("inspect session: a session id (ID, --session or $SOFTPROBE_SESSION_ID) is required",
                                envelope.EXIT_USAGE)
    state = Runtime(args.runtime_url).call("GET", f"/v1/sessions/{session_id}/state")
    fixtures = state.pop("fixtures", None)
    state["fixtureCount"] = len(fixtures) if isinstance(fixtures, list) else 0
    envelope.report(out, **state)
    print(f"session {state.get('sessionId', session_id)}  mode {state.get('mode', '-')}  "
          f"revision {state.get('sessionRevision', '-')}", file=out)
    for key in ("policy", "rules", "caseSummary", "stats"):
        print(f"{key}: {json.dumps(state.get(key), sort_keys=True)}", file=out)
    print(f"fixtures: {state['fixtureCount']}", file=out)
    return envelope.EXIT_OK
