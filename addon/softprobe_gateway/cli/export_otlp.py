"""`softprobe export otlp --case GLOB --endpoint URL`: the spans of case files sent to an
OpenTelemetry collector (or any OTLP/HTTP receiver, `softprobe serve`'s `/v1/traces` too), one
POST per trace document, as Softprobe's CLI streams them: OTLP JSON by default, protobuf with
`--protocol protobuf`. Each trace is decoded first (`formats.spans`), so a malformed one is
reported and not sent. Exit 1 when any trace was not delivered."""

from __future__ import annotations

import argparse
import copy
import json
from typing import TextIO

import httpx

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import matching_files, read_json
from softprobe_gateway.cli.replay import header_field
from softprobe_gateway.config.schema import ConfigError
from softprobe_gateway.formats.casefile import CaseError
from softprobe_gateway.formats.spans import BadTraces, traces_from_document, traces_to_document
from softprobe_gateway.tls import client_context

CONTENT_TYPES = {"json": "application/json", "protobuf": "application/x-protobuf"}


def register(commands: argparse._SubParsersAction) -> None:
    about = "send case files' spans to an OTLP/HTTP endpoint"
    actions = commands.add_parser("export", help=about, description=about).add_subparsers(
        required=True, metavar="FORMAT")
    otlp = actions.add_parser("otlp", help=about, description=__doc__.split("\n\n")[0])
    otlp.add_argument("--case", action="append", required=True, metavar="GLOB",
                      help="case files, a quoted glob ('cases/**/*.case.json'); repeatable")
    otlp.add_argument("--endpoint", required=True, metavar="URL",
                      help="the full traces URL, e.g. http://otel-collector:4318/v1/traces")
    otlp.add_argument("--protocol", choices=tuple(CONTENT_TYPES), default="json",
                      help="OTLP/HTTP encoding (default: json)")
    otlp.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                      help="sent with every POST (repeatable), e.g. a collector's credential")
    otlp.add_argument("--timeout", type=float, default=30.0, help="seconds per POST (default 30)")
    otlp.set_defaults(command=cmd_otlp)


def cmd_otlp(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    if not args.endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"--endpoint: expected an http(s):// URL, got {args.endpoint!r}")
    try:
        headers = dict(header_field(h) for h in args.header)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    headers["content-type"] = CONTENT_TYPES[args.protocol]
    files, sent, failed = [], 0, 0
    with httpx.Client(trust_env=False, verify=client_context(), timeout=args.timeout, headers=headers) as client:
        for path in matching_files(args.case):
            _, case = read_json(str(path), CaseError)
            traces = case.get("traces") if isinstance(case, dict) else None
            if not isinstance(traces, list):
                raise CaseError(f"{path}: not a Softprobe case: no traces[] list")
            result = {"path": str(path), "sent": 0, "failed": 0, "errors": []}
            for i, trace in enumerate(traces):
                problem = _post(client, args.endpoint, args.protocol, trace)
                if problem:
                    result["failed"] += 1
                    result["errors"].append(f"traces[{i}]: {problem}")
                else:
                    result["sent"] += 1
            sent, failed = sent + result["sent"], failed + result["failed"]
            files.append(result)
            print(f"{path}: {result['sent']} traces sent" + (f", {result['failed']} failed" if result["failed"] else ""),
                  file=out)
            for problem in result["errors"]:
                print(f"  {problem}", file=out)
    envelope.report(out, endpoint=args.endpoint, protocol=args.protocol, sent=sent, failed=failed, files=files)
    print(f"export otlp: sent={sent} failed={failed}", file=out)
    if failed:
        envelope.outcome(out, code="export_failed", message=f"{failed} traces not delivered to {args.endpoint}")
        return envelope.EXIT_FAILED
    return envelope.EXIT_OK


def _post(client: httpx.Client, endpoint: str, protocol: str, trace: object) -> str:
    """One trace document POSTed; what went wrong, or ""."""
    if not isinstance(trace, dict):
        return "not an OTLP JSON document"
    try:
        data = traces_from_document(copy.deepcopy(trace))  # decoding changes the document in place
    except BadTraces as e:
        return str(e)
    body = data.SerializeToString() if protocol == "protobuf" else json.dumps(traces_to_document(data)).encode()
    try:
        answer = client.post(endpoint, content=body)
    except httpx.HTTPError as e:
        return f"{endpoint} unreachable: {e}"
    if not answer.is_success:
        return f"{endpoint} answered {answer.status_code}: {answer.text.strip()[:200]}"
    return ""
