"""`softprobe suite run SUITE.yaml`: Softprobe's suite files run against a runtime's control API and
the app, with the flags, output and exit codes of Softprobe's CLI reference (`suite run`): 0 when
every case passed, 20 when one failed; 5 for a suite file that cannot be run, 2 for a bad flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from softprobe_gateway.cli import envelope, suite_authoring
from softprobe_gateway.cli.session import runtime_options
from softprobe_gateway.suite import junit, model, report, runner
from softprobe_gateway.suite.results import CaseResult, SuiteResult

EXIT_OK, EXIT_INVALID, EXIT_SUITE_FAILED = envelope.EXIT_OK, envelope.EXIT_INVALID, envelope.EXIT_SUITE
DEFAULT_APP = "http://127.0.0.1:8081"
DIFF_LINES = 10  # per failed case in the human output; every entry is in --json and the reports
_LABELS = {"passed": "OK  ", "failed": "FAIL", "skipped": "SKIP"}


def default_parallel() -> int:
    return min(32, (os.cpu_count() or 1) * 4)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `softprobe suite ...` to the CLI."""
    suite = commands.add_parser("suite", help="run Softprobe suite files (*.suite.yaml) against a runtime and an app")
    actions = suite.add_subparsers(required=True, metavar="ACTION")
    run = actions.add_parser("run", parents=[runtime_options()],
                             help="run every case of a suite; exit 20 when one fails")
    run.add_argument("suite", metavar="SUITE.yaml")
    run.add_argument("--app-url", default=os.environ.get("APP_URL", ""),
                     help=f"the app, best through the ingress gateway (default: $APP_URL, else {DEFAULT_APP}; "
                          "a suite's request.url wins)")
    run.add_argument("--parallel", type=_positive, default=default_parallel(), metavar="N",
                     help="cases at once (default: min(32, cpus*4) = %(default)s)")
    run.add_argument("--hooks", action="append", default=[], metavar="PATH",
                     help="a hook file (.py, .js, .mjs, .ts), repeatable or comma-separated")
    run.add_argument("--filter", default="", metavar="SUBSTR",
                     help="only the cases whose path or name contains SUBSTR (a glob when it has *, ? or [)")
    run.add_argument("--fail-fast", action="store_true", help="start no case after the first failure")
    run.add_argument("--env-file", metavar="PATH", help="KEY=VALUE lines for ${VAR} (the shell's environment wins)")
    run.add_argument("--json", action="store_true", help="one JSON envelope: status, exitCode, error, suite, "
                     "total, passed, failed, cases[]")
    run.add_argument("--junit", metavar="PATH", help="write JUnit XML (caseId in name, the case file in classname)")
    run.add_argument("--report", metavar="PATH", help="write a standalone HTML report with each failed case's diff")
    run.add_argument("--detect-noise", action="store_true",
                     help="replay each case once more first and ignore the body JSONPaths that differ between the two")
    run.set_defaults(command=cmd_run)
    suite_authoring.register(actions)


def cmd_run(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    try:
        suite = model.load(args.suite, args.env_file)
        cases = suite.cases(args.filter)
    except model.SuiteError as e:
        raise envelope.CliError(f"suite run: {e}", EXIT_INVALID, "invalid_suite") from None
    if not cases:
        print("softprobe: suite run: no cases selected", file=sys.stderr)
    with suite_authoring.opened_hooks(args.hooks, "suite run") as hooks:
        result = runner.run(suite, cases, runner.Settings(args.runtime_url, args.app_url or DEFAULT_APP,
                                                          args.parallel, args.fail_fast, args.detect_noise), hooks)
    if args.junit:
        junit.write(result, args.junit)
    if args.report:
        report.write(result, args.report)
    code = EXIT_OK if result.ok else EXIT_SUITE_FAILED
    if envelope.wanted(out):
        write_json(out, result, code)
    else:
        write_human(out, result)
    return code


def write_human(out: TextIO, result: SuiteResult) -> None:
    """Softprobe's human output, a failed case's differences indented under its line."""
    print(f"suite: {result.name}", file=out)
    for case in result.cases:
        line = f"  {_LABELS[case.status]} {case.label} ({case.duration_ms}ms)"
        print(f"{line}: {case.failure}" if case.failure else line, file=out)
        if case.status == "failed":
            for diff in case.diffs[:DIFF_LINES]:
                print(f"       {junit.diff_line(diff)}", file=out)  # as the JUnit failure text says it
            if len(case.diffs) > DIFF_LINES:
                print(f"       ... {len(case.diffs) - DIFF_LINES} more", file=out)
    print(f"result: passed={result.passed} failed={result.failed} total={result.total}", file=out)


def write_json(out: TextIO, result: SuiteResult, code: int) -> None:
    """The `--json` answer: the envelope's `status`, `exitCode`, `error` (written by `envelope`),
    and the reference's stable fields for `suite run` (`suite`, `total`, `passed`, `failed`,
    `cases[]` with `caseId`, `status`, `durationMs`, `error?`), with more beside them
    (`displayName`, `path`, `diffs`, `skipped`, `durationMs`)."""
    envelope.report(out, **json_fields(result))
    if code != EXIT_OK:
        envelope.outcome(out, code="suite_failed", message=f"{result.failed} of {result.total} cases failed")


def json_fields(result: SuiteResult) -> dict[str, Any]:
    return {"suite": result.name, "total": result.total, "passed": result.passed, "failed": result.failed,
            "skipped": result.skipped, "durationMs": result.duration_ms,
            "cases": [_case_json(case) for case in result.cases]}


def _case_json(case: CaseResult) -> dict[str, Any]:
    fields: dict[str, Any] = {"caseId": case.case_id, "displayName": case.name, "path": case.path,
                              "status": case.status, "durationMs": case.duration_ms}
    if case.failure:
        fields["error"] = case.failure
    if case.diffs:
        fields["diffs"] = [{"what": d.what, "where": d.where, "expected": d.expected, "actual": d.actual,
                            "reason": d.reason, **({"source": d.source} if d.source else {})} for d in case.diffs]
    if case.notes:
        fields["notes"] = list(case.notes)
    return fields


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number expected") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1")
    return value
