"""`softprobe session start|load-case|rules apply|policy set|stats|close`: Softprobe's CLI's
session commands, named and flagged as its CLI reference names them, against a runtime's control
API (`softprobe serve`, or Softprobe's own runtime), so a script written for either reads the same.

The runtime is `--runtime-url`, else $SOFTPROBE_RUNTIME_URL, else `softprobe serve`'s own default
(http://127.0.0.1:8090: not 8080, `make run`'s proxy, which would answer 508); the token
$SOFTPROBE_API_TOKEN (sent as `Authorization: Bearer`). Exit codes are Softprobe's: 3 runtime
unreachable, 4 session not found, 5 rejected as invalid, 1 any other failure (2, as for every
command, a bad argument).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

import httpx
import yaml

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.envelope import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_NO_SESSION,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
)
from softprobe_gateway.config.schema import ConfigError
from softprobe_gateway.config.validate import http_url_problem, shown_url
from softprobe_gateway.server.control_api import SCHEMA_VERSION, SPEC_VERSION

RUNTIME_LISTEN = "127.0.0.1:8090"  # `softprobe serve --listen`'s default: one default everywhere
DEFAULT_RUNTIME = f"http://{RUNTIME_LISTEN}"
SESSION_ENV = "SOFTPROBE_SESSION_ID"
RUNTIME_ENV = "SOFTPROBE_RUNTIME_URL"
TOKEN_HINT = "$SOFTPROBE_API_TOKEN"  # where a runtime URL's credentials go instead
_EXITS = {"unknown_session": EXIT_NO_SESSION, "session_not_found": EXIT_NO_SESSION, "invalid_request": EXIT_INVALID}


class _FromEnv(str):
    """$SOFTPROBE_RUNTIME_URL as `--runtime-url`'s default, so a bad one is named as the variable."""


def runtime_url(value: str) -> str:
    """`--runtime-url`'s type: a malformed URL is a bad argument (exit 2, one line naming where it
    came from), not a runtime that is down (3). Shown without userinfo, path or query (a token)."""
    source = f"${RUNTIME_ENV} (its default): " if isinstance(value, _FromEnv) else ""
    value = value.strip()
    problem = http_url_problem(value, credentials_in=TOKEN_HINT)
    if not problem:
        return value
    shown = shown_url(value)
    if "://" not in value and not http_url_problem(f"http://{value}", credentials_in=TOKEN_HINT):
        shown, problem = "it", f"has no http:// or https:// (did you mean {shown_url(f'http://{value}')}?)"
    raise argparse.ArgumentTypeError(f"{source}{shown} {problem}; expected http(s)://HOST[:PORT]")


def runtime_options() -> argparse.ArgumentParser:
    """`--runtime-url`, a parent of every command that talks to a runtime's control API."""
    options = argparse.ArgumentParser(add_help=False)
    env = os.environ.get(RUNTIME_ENV)
    options.add_argument("--runtime-url", type=runtime_url, default=_FromEnv(env) if env else DEFAULT_RUNTIME,
                         metavar="URL", help=f"the runtime (default: ${RUNTIME_ENV}, else {DEFAULT_RUNTIME})")
    return options


def register(commands: argparse._SubParsersAction) -> None:
    """Add `softprobe session ...` to the CLI."""
    common = argparse.ArgumentParser(add_help=False, parents=[runtime_options()])
    sessions = commands.add_parser("session", help="drive a test session on a runtime's control API")
    actions = sessions.add_subparsers(required=True, metavar="ACTION")

    def action(name: str, run: Any, help: str, parent: argparse._SubParsersAction = actions,
               file: bool = False) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, parents=[common], help=help)
        if name != "start":
            parser.add_argument("--session", default=os.environ.get(SESSION_ENV),
                                help=f"the session id (default: ${SESSION_ENV})")
            run = _with_session(run, parser.prog.removeprefix("softprobe "))
        if file:
            parser.add_argument("--file", required=name != "set", help="a JSON or YAML document")
        parser.set_defaults(command=run)
        return parser

    start = action("start", cmd_start, "create a session; prints its id")
    start.add_argument("--mode", required=True, choices=("capture", "replay", "generate"))
    start.add_argument("--shell", action="store_true", help="print `export SOFTPROBE_SESSION_ID=...`")
    start.add_argument("--policy", metavar="FILE", help="a policy to apply at once")
    start.add_argument("--case", metavar="FILE", help="a case file to load at once")
    action("load-case", cmd_load_case, "load a case file into the session", file=True)
    rules = actions.add_parser("rules", help="the session's rules").add_subparsers(required=True, metavar="ACTION")
    action("apply", cmd_rules_apply, "replace the session's rules with a file's", rules, file=True)
    policy = actions.add_parser("policy", help="the session's policy").add_subparsers(required=True, metavar="ACTION")
    action("set", cmd_policy_set, "replace the session's policy", policy, file=True).add_argument(
        "--strict", action="store_true", help="externalHttp: strict, defaultOnMiss: error")
    action("stats", cmd_stats, "the session's counters")
    action("close", cmd_close, "close the session").add_argument(
        "--out", metavar="FILE", help="a capture session's case file, written by the runtime on close")


def _with_session(run: Any, prog: str) -> Any:
    """`run`, refused (exit 2) with a line naming both ways of giving the session when neither
    `--session` nor $SOFTPROBE_SESSION_ID does (argparse would name only the flag)."""

    def command(args: argparse.Namespace, settings: object, out: TextIO) -> int:
        if not args.session:
            raise CliError(f"{prog}: no session: give --session ID or set ${SESSION_ENV} "
                           f"(`softprobe session start --shell` prints its export line)", EXIT_USAGE)
        return run(args, settings, out)

    return command


class Runtime:
    """The control API of one runtime over HTTP (no proxy from the environment)."""

    def __init__(self, url: str) -> None:
        token = os.environ.get("SOFTPROBE_API_TOKEN", "")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, trust_env=False, timeout=30)

    def call(self, method: str, path: str, document: Any = None) -> dict[str, Any]:
        try:
            reply = self.client.request(method, path, json=document)
        except httpx.HTTPError as e:
            raise SessionError(f"runtime {self.url} unreachable: {e}", EXIT_UNREACHABLE,
                               "runtime_unreachable") from None
        try:
            body = reply.json()
        except ValueError:
            body = {}
        if reply.status_code != 200:
            problem = body.get("error") if isinstance(body, dict) else None
            code = problem.get("code", "") if isinstance(problem, dict) else ""
            message = problem.get("message", reply.text) if isinstance(problem, dict) else reply.text
            raise SessionError(f"{method} {path}: {reply.status_code} {code}: {message}".replace(" : ", ": "),
                               _EXITS.get(code, EXIT_INVALID if reply.status_code in (400, 422) else EXIT_FAILED),
                               code)
        return body


class SessionError(CliError):
    """The runtime refused or could not be reached; `exit_code` says which, as Softprobe's CLI does,
    `code` is the runtime's error code."""


def _document(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise SessionError(f"{path}: not JSON or YAML: {e}", EXIT_INVALID) from None


def _run(args: argparse.Namespace, out: TextIO, method: str, route: str, document: Any = None,
         **fields: Any) -> int:
    _print(out, {**Runtime(args.runtime_url).call(method, route, document), **fields})
    return 0


def _print(out: TextIO, reply: dict[str, Any]) -> None:
    """The answer as `key=value` pairs, or under `--json` as the envelope's fields."""
    envelope.report(out, **reply)
    if not envelope.wanted(out):
        print("  ".join(f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in reply.items()), file=out)


def cmd_start(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    runtime = Runtime(args.runtime_url)
    reply = runtime.call("POST", "/v1/sessions", {"mode": args.mode})
    sid = reply["sessionId"]
    if args.policy:
        reply = runtime.call("POST", f"/v1/sessions/{sid}/policy", _document(args.policy))
    if args.case:
        reply = runtime.call("POST", f"/v1/sessions/{sid}/load-case", _document(args.case))
    envelope.report(out, **reply, mode=args.mode, specVersion=SPEC_VERSION, schemaVersion=SCHEMA_VERSION)
    if args.shell:
        print(f"export SOFTPROBE_SESSION_ID={sid}", file=out)
    else:
        print(sid, file=out)
    return 0


def cmd_load_case(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    case = _document(args.file)
    traces = case.get("traces") if isinstance(case, dict) else None
    return _run(args, out, "POST", f"/v1/sessions/{args.session}/load-case", case,
                caseId=case.get("caseId", "") if isinstance(case, dict) else "",
                traceCount=len(traces) if isinstance(traces, list) else 0)


def cmd_rules_apply(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    rules = _document(args.file)
    listed = rules.get("rules") if isinstance(rules, dict) else None
    return _run(args, out, "POST", f"/v1/sessions/{args.session}/rules", rules,
                ruleCount=len(listed) if isinstance(listed, list) else 0)


def cmd_policy_set(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    policy = _document(args.file) if args.file else {}
    if args.strict:
        policy = {**(policy or {}), "externalHttp": "strict", "defaultOnMiss": "error"}
    if not policy:
        raise ConfigError("session policy set: --strict or --file required")
    return _run(args, out, "POST", f"/v1/sessions/{args.session}/policy", policy)


def cmd_stats(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    """The counters beside the session's id, revision and mode, flat as cli.md's example shows them;
    the envelope also has them under `stats`, as its table of stable fields says."""
    reply = Runtime(args.runtime_url).call("GET", f"/v1/sessions/{args.session}/stats")
    stats = reply.pop("stats", {})
    stats = stats if isinstance(stats, dict) else {}
    envelope.report(out, stats=stats)
    _print(out, {**reply, **stats})
    return 0


def close_route(session_id: str, target: str | None) -> str:
    """The close of a session, `target` (`--out`) travelling as the runtime's `?out=`: a path made
    absolute (the runtime resolves it, not this shell; a local runtime then writes where the caller
    meant), a URL as it is."""
    if target and "://" not in target:
        target = str(Path(target).absolute())
    query = f"?{urlencode({'out': target})}" if target else ""
    return f"/v1/sessions/{session_id}/close{query}"


def cmd_close(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    runtime = Runtime(args.runtime_url)
    if envelope.wanted(out):  # the envelope's `stats`: the counters as they were at the close
        envelope.report(out, stats=runtime.call("GET", f"/v1/sessions/{args.session}/stats").get("stats", {}))
    _print(out, runtime.call("POST", close_route(args.session, args.out)))
    return 0
