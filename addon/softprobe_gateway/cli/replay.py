"""`softprobe replay`: test a new version of a service with a recording.

Every recorded inbound request of a session (from the store) or of case files is sent again, in
recorded order, to `--target` with the session header set to the recorded session plus this
run's id (`<session>~<run>`). A gateway in strict replay mode in front of the target's
dependencies then answers its outbound calls from the same recording, repeated calls from the
first recorded answer on every run, so the only thing that changed is the target. Each answer is
compared with the recorded one: status, chosen headers, and the body (JSON structurally, minus
ignored paths; text and binary exactly). Exit status 0 when everything matched, 1 when anything
differed or failed; JUnit XML for CI with `--junit`.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import httpx

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import Settings, find_session, read_case
from softprobe_gateway.cli.session import Runtime, runtime_options
from softprobe_gateway.config.schema import ConfigError, StoreConfig
from softprobe_gateway.decisions.tracecontext import SESSION_HEADERS, SP_SESSION, run_session
from softprobe_gateway.formats.casefile import CaseError
from softprobe_gateway.otlp import HOP_BY_HOP, hit_body
from softprobe_gateway.store import matching
from softprobe_gateway.store.model import Recording
from softprobe_gateway.tls import client_context

SESSION_HEADER = SESSION_HEADERS[0]
# Recorded request headers not sent again: the target's own host and framing, the original
# run's trace context and session (replaced by the replay's), and the hops it went through (a
# gateway's `via` would make that gateway refuse the replay as a loop); bodies are recorded decoded.
NOT_RESENT = HOP_BY_HOP | set(SESSION_HEADERS) | {
    "host", "content-encoding", "traceparent", "tracestate", "x-sp-num", "via"}
MAX_TEXT_DIFF = 20  # lines of a text body's unified diff that are shown


def register(commands: argparse._SubParsersAction, store_options: argparse.ArgumentParser) -> None:
    replay = commands.add_parser(
        "replay", parents=[store_options, runtime_options()],
        help="send recorded inbound requests to a new version and compare (also as `replay run`)",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    replay.add_argument("sources", nargs="+", metavar="SESSION_ID|CASE_FILE",
                        help="a session in the store, or *.case.json files")
    replay.add_argument("--target", metavar="URL", help="the service under test (required but for "
                                                          "`replay run --session ID`: a live session's hits and misses)")
    replay.add_argument("--ignore", action="append", default=[], metavar="PATH",
                        help="a JSON body field left out of the comparison (repeatable): $.a.b is a "
                             "path from the root (list items are transparent: $.items[*].id), a "
                             "bare name matches that key anywhere")
    replay.add_argument("--check-header", action="append", metavar="NAME",
                        help="a response header compared (repeatable; default: content-type)")
    replay.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="set on every request sent (repeatable), e.g. a credential the "
                             "recording does not keep")
    replay.add_argument("--service", help="only the inbound exchanges of this service")
    session = replay.add_mutually_exclusive_group()
    session.add_argument("--session", help="the session header's value, sent as it is (default: the "
                                           "recorded session plus this run's id, SESSION~RUN)")
    session.add_argument("--no-run-id", action="store_true",
                         help="send the recorded session id without a run id (repeated calls then "
                              "continue where a run less than store.sequence_reset_s ago stopped)")
    replay.add_argument("--session-header", default=SESSION_HEADER,
                        help=f"the header carrying the session (default: {SESSION_HEADER})")
    replay.add_argument("--junit", metavar="FILE", help="write JUnit XML here")
    replay.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    replay.set_defaults(command=cmd_replay)


# -- comparing (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Checks:
    """What an answer is compared on."""

    headers: tuple[str, ...] = ("content-type",)
    ignore: matching.Ignore = matching.Ignore()

    @classmethod
    def parse(cls, headers: Iterable[str] | None, ignore: Iterable[str]) -> Checks:
        names, paths = set(), set()
        for text in ignore:
            rooted = text.startswith("$")
            steps = tuple(s for s in text.removeprefix("$").replace("[", ".[").split(".")
                          if s and not s.startswith("["))
            if not steps:
                raise ValueError(f"--ignore: no field in {text!r}")
            if rooted or len(steps) > 1:
                paths.add(steps)
            else:
                names.add(steps[0])
        return cls(tuple(h.lower() for h in headers) if headers else cls.headers,
                   matching.Ignore(frozenset(names), frozenset(paths)))


def compare(recorded: Recording, status: int, headers: httpx.Headers | dict[str, str], body: bytes,
            checks: Checks) -> list[str]:
    """How an answer differs from the recorded one, one readable line per difference."""
    lines = [] if status == recorded.status else [f"status: recorded {recorded.status}, got {status}"]
    for name in checks.headers:
        want, got = recorded.response_headers.get(name), headers.get(name)
        if want != got:
            lines.append(f"header {name}: {_value('recorded', want)}, {_value('got', got)}")
    content_type = recorded.response_headers.get("content-type")
    return lines + compare_bodies(hit_body(recorded.response_body, content_type), body,
                                  content_type, headers.get("content-type"), checks.ignore)


def compare_bodies(want: bytes, got: bytes, want_type: str | None, got_type: str | None,
                   ignore: matching.Ignore) -> list[str]:
    """JSON structurally (minus ignored fields), text line by line, anything else byte for byte."""
    if "json" in f"{want_type} {got_type}".lower():
        try:
            a, b = json.loads(want), json.loads(got)
        except ValueError:
            pass
        else:
            return matching.diff_json("body", matching.strip_ignored(a, ignore),
                                      matching.strip_ignored(b, ignore))
    if want == got:
        return []
    try:
        diff = list(difflib.unified_diff(want.decode().splitlines(), got.decode().splitlines(),
                                         "recorded", "got", n=1, lineterm=""))
    except UnicodeDecodeError:
        diff = []
    if not diff:  # binary, or text differing only in line endings
        return [f"body: recorded {_digest(want)}, got {_digest(got)}"]
    shown = diff[:MAX_TEXT_DIFF] + ([f"... {len(diff) - MAX_TEXT_DIFF} more lines"]
                                    if len(diff) > MAX_TEXT_DIFF else [])
    return ["body: text differs"] + [f"  {line}" for line in shown]


def _value(label: str, value: str | None) -> str:
    return f"{label} {value!r}" if value is not None else ("not recorded" if label == "recorded" else "missing")


def _digest(body: bytes) -> str:
    return f"{len(body)} bytes (sha256 {hashlib.sha256(body).hexdigest()[:12]})"


def request_to_send(ex: Recording, session: str, session_header: str,
                    extra: dict[str, str]) -> tuple[list[tuple[str, str]], bytes]:
    """The recorded request's header fields (repeats apart, in order) and body as they are sent
    again, in the replay's session (also as a `tracestate` entry, which W3C-instrumented
    services pass on by themselves); `extra` replaces recorded fields of the same names."""
    added = {session_header: session, "tracestate": f"{SP_SESSION}={session}", **extra}
    replaced = NOT_RESENT | {name.lower() for name in added}
    headers = [(k, v) for k, v in ex.request_headers if not k.startswith(":") and k not in replaced]
    return headers + list(added.items()), hit_body(ex.request_body, ex.request_headers.get("content-type"))


# -- running --------------------------------------------------------------------------------


@dataclass
class Result:
    exchange: Recording
    number: int
    status: int = 0
    seconds: float = 0.0
    differences: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.number} {self.exchange.method} {self.exchange.path}"


@dataclass
class Suite:
    """One source (a session or a case file) and its inbound exchanges."""

    name: str
    exchanges: list[Recording]
    results: list[Result] = field(default_factory=list)


def cmd_replay(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """`replay run ...` is this command too (Softprobe's CLI's name for it); `replay run --session ID`
    without sources or target is Softprobe's diagnostic of a live session on the runtime."""
    if args.sources[0] == "run":
        args.sources = args.sources[1:]
        if not args.sources and not args.target and args.session:
            return _live(args, out)
    if not args.sources:
        raise ConfigError("replay: SESSION_ID|CASE_FILE... required (or `replay run --session ID` for a live session)")
    if not args.target:
        raise ConfigError("replay: --target URL required")
    target = urlsplit(args.target)
    if target.scheme not in ("http", "https") or not target.netloc:
        raise ConfigError(f"--target: expected http(s)://HOST[:PORT][/PATH], got {args.target!r}")
    try:
        checks = Checks.parse(args.check_header, args.ignore)
        extra = dict(header_field(h) for h in args.header)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    suites = list(_suites(args.sources, settings.store, args.service))
    sessions = _sessions(suites, args.session, "" if args.no_run_id else secrets.token_hex(4))
    started = time.monotonic()
    with httpx.Client(base_url=args.target, trust_env=False, verify=client_context(),
                      timeout=args.timeout) as client:
        for suite in suites:
            sent = ", ".join(dict.fromkeys(sessions[ex.session_id] for ex in suite.exchanges))
            print(f"replaying {suite.name}: {len(suite.exchanges)} inbound exchanges against {args.target} "
                  f"in session {sent}", file=out, flush=True)
            for number, ex in enumerate(suite.exchanges, 1):
                result = _replay(client, ex, number, sessions[ex.session_id], args, checks, extra)
                suite.results.append(result)
                _print(out, result)
    elapsed = time.monotonic() - started
    results = [r for s in suites for r in s.results]
    failed = sum(bool(r.differences) for r in results)
    errors = sum(bool(r.error) for r in results)
    if args.junit:
        Path(args.junit).write_bytes(junit(suites, elapsed))
    envelope.report(out, total=len(results), passed=len(results) - failed - errors, differed=failed, errors=errors,
                    durationMs=round(elapsed * 1000), cases=[{"name": s.name, "results": [
                        {"name": r.name, "status": r.status, "durationMs": round(r.seconds * 1000, 1),
                         "differences": r.differences, **({"error": r.error} if r.error else {})}
                        for r in s.results]} for s in suites])
    print(f"replay: {len(results)} exchanges in {len(suites)} {'case' if len(suites) == 1 else 'cases'}: "
          f"{len(results) - failed - errors} passed, {failed} differed, {errors} failed to run, "
          f"in {elapsed:.2f} s" + (f"; JUnit XML in {args.junit}" if args.junit else ""), file=out)
    return 1 if failed or errors else 0


def _live(args: argparse.Namespace, out: TextIO) -> int:
    """A live replay session's counters: hits (lookups answered) and strict misses, and whether a
    case is loaded (none answered from a loaded case: the case is stale)."""
    runtime = Runtime(args.runtime_url)
    state = runtime.call("GET", f"/v1/sessions/{args.session}/state")
    counters = state.get("stats", {})
    hits, misses = counters.get("injectedSpans", 0), counters.get("strictMisses", 0)
    loaded = bool(state.get("caseSummary", {}).get("caseId"))
    problem = "code_regression" if misses else "case_staleness" if loaded and not hits else ""
    envelope.report(out, sessionId=args.session, caseLoaded=loaded, stats={"hits": hits, "misses": misses, **counters},
                    **({"errorType": problem} if problem else {}))
    print(f"session {args.session}\nhits: {hits}\nmisses: {misses}\n"
          + "".join(f"{k}: {v}\n" for k, v in counters.items()), file=out, end="")
    return 0


def header_field(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--header: expected 'NAME: VALUE', got {text!r}")
    return name.strip().lower(), value.strip()


def _suites(sources: list[str], config: StoreConfig, service: str | None) -> Iterator[Suite]:
    """Each source's inbound exchanges in recorded order: a file is a case, anything else a
    session in the store (by id or id prefix)."""
    for source in sources:
        name = source
        if Path(source).is_file():
            exchanges = read_case(source)
            exchanges.sort(key=lambda ex: ex.start_ns)
        else:
            summary, exchanges = find_session(config, source)
            name = summary.id
        inbound = [ex for ex in exchanges if ex.direction == "inbound" and not ex.answered_by
                   and (not service or ex.service == service)]
        if not inbound:
            raise CaseError(f"{source}: no inbound exchanges to replay"
                            + (f" for service {service!r}" if service else ""))
        yield Suite(name, inbound)


def _sessions(suites: list[Suite], session: str | None, run_id: str) -> dict[str, str]:
    """The session sent for each recorded one: `session` when given, else the recorded session
    plus `run_id` (a replay run of its own, see `tracecontext.RUN_SEPARATOR`), or as it is."""
    recorded = {ex.session_id for suite in suites for ex in suite.exchanges}
    try:
        return {s: session or (run_session(s, run_id) if run_id else s) for s in recorded}
    except ValueError as e:
        raise ConfigError(f"{e}; --no-run-id sends it as it is") from None


def _replay(client: httpx.Client, ex: Recording, number: int, session: str, args: argparse.Namespace,
            checks: Checks, extra: dict[str, str]) -> Result:
    result = Result(ex, number)
    headers, body = request_to_send(ex, session, args.session_header, extra)
    started = time.monotonic()
    try:
        answer = client.request(ex.method, ex.path, headers=headers, content=body)
    except httpx.HTTPError as e:
        result.error = f"{type(e).__name__}: {e}"
    else:
        result.status = answer.status_code
        result.differences = compare(ex, answer.status_code, answer.headers, answer.content, checks)
    result.seconds = time.monotonic() - started
    return result


def _print(out: TextIO, result: Result) -> None:
    verdict = "ERROR" if result.error else "FAIL" if result.differences else "ok"
    print(f"  {verdict:5} {result.name}  -> {result.status or '-'}  {result.seconds * 1000:.1f} ms",
          file=out, flush=True)
    for line in [result.error] if result.error else result.differences:
        print(f"          {line}", file=out)


def junit(suites: list[Suite], elapsed: float) -> bytes:
    """JUnit XML: a testsuite per case (session or file), a testcase per replayed exchange."""
    root = ET.Element("testsuites", name="softprobe replay", time=f"{elapsed:.3f}")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for suite in suites:
        counts = {"tests": len(suite.results), "failures": sum(bool(r.differences) for r in suite.results),
                  "errors": sum(bool(r.error) for r in suite.results)}
        node = ET.SubElement(root, "testsuite", name=suite.name, **{k: str(v) for k, v in counts.items()},
                             time=f"{sum(r.seconds for r in suite.results):.3f}")
        for result in suite.results:
            case = ET.SubElement(node, "testcase", classname=suite.name, name=result.name,
                                 time=f"{result.seconds:.3f}")
            if result.error:
                ET.SubElement(case, "error", message=result.error, type="request").text = result.error
            elif result.differences:
                ET.SubElement(case, "failure", message=result.differences[0],
                              type="difference").text = "\n".join(result.differences)
        totals = {k: totals[k] + counts[k] for k in totals}
    root.attrib.update({k: str(v) for k, v in totals.items()})
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
