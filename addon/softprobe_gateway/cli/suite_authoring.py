"""`softprobe suite validate|diff|init`: writing and keeping suites, no runtime needed. `validate`
finds what would stop a suite's cases (exit 5, Softprobe's validation code), `diff` compares two
sets of captures for drift in their outbound calls, `init` writes a starting suite from case files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import yaml

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import matching_files, verdict
from softprobe_gateway.suite import caseview, drift, model, starter, validation
from softprobe_gateway.suite.hooks import HookFileError, Hooks


def register(actions: argparse._SubParsersAction) -> None:
    """Add `validate`, `diff` and `init` beside `suite run`."""
    check = actions.add_parser("validate", help="check a suite without running it; exit 5 on errors")
    check.add_argument("suite", metavar="SUITE.yaml")
    check.add_argument("--hooks", action="append", default=[], metavar="PATH",
                       help="the hook files the suite's hooks must be in (as for suite run)")
    check.add_argument("--env-file", metavar="PATH", help="KEY=VALUE lines for ${VAR} (the shell's environment wins)")
    check.set_defaults(command=cmd_validate)

    compare = actions.add_parser("diff", help="outbound calls added and removed between two sets of case files")
    compare.add_argument("--baseline", nargs="+", required=True, metavar="CASES",
                         help="case files or globs (quoted, or expanded by the shell)")
    compare.add_argument("--current", nargs="+", required=True, metavar="CASES")
    compare.set_defaults(command=cmd_diff)

    init = actions.add_parser("init", help="write a starting suite from case files")
    init.add_argument("cases", nargs="+", metavar="CASE", help="case files or globs")
    init.add_argument("-o", "--output", required=True, metavar="SUITE.yaml", help="the suite file to write")
    init.add_argument("--name", help="the suite's name (default: the file's name)")
    init.add_argument("--force", action="store_true", help="replace the suite file when it exists")
    init.set_defaults(command=cmd_init)


@contextmanager
def opened_hooks(values: list[str], command: str) -> Iterator[Hooks | None]:
    """The hook files of `--hooks` (repeated or comma-separated) loaded for one command and closed
    after it (their Node sidecar with them); None when there are none. Exit 2 for a file that
    does not load."""
    files = [part.strip() for value in values for part in value.split(",") if part.strip()]
    try:
        hooks = Hooks(files, sys.stderr) if files else None
    except HookFileError as e:
        raise envelope.CliError(f"{command}: {e}", envelope.EXIT_USAGE, "invalid_hooks") from None
    try:
        yield hooks
    finally:
        if hooks is not None:
            hooks.close()


def cmd_validate(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    with opened_hooks(args.hooks, "suite validate") as hooks:
        try:
            suite = model.load(args.suite, args.env_file)
            name, cases = suite.name, len(suite.cases())
            problems = validation.problems(suite, hooks.names() if hooks else None)
        except model.SuiteError as e:
            name, cases, problems = "", 0, [str(e)]
    return verdict(out, args.suite, problems, code="invalid_suite", note=f" (suite {name}, {cases} cases)",
                   suite=name, cases=cases)


def cmd_diff(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    sets = {side: _cases(getattr(args, side)) for side in ("baseline", "current")}
    counts = {side: drift.signatures(cases) for side, cases in sets.items()}
    found = drift.drift(counts["baseline"], counts["current"])
    print(f"baseline: {len(sets['baseline'])} case files, {len(counts['baseline'])} outbound signatures; "
          f"current: {len(sets['current'])} case files, {len(counts['current'])}", file=out)
    for mark, side in (("+", found.added), ("-", found.removed)):
        for sig, calls in side.items():
            print(f"{mark} {sig}  ({calls} {'call' if calls == 1 else 'calls'})", file=out)
    print(f"result: added={len(found.added)} removed={len(found.removed)} kept={found.kept}", file=out)
    envelope.report(out, added=[{"signature": s, "calls": n} for s, n in found.added.items()],
                    removed=[{"signature": s, "calls": n} for s, n in found.removed.items()],
                    kept=found.kept, drift=not found.none)
    return envelope.EXIT_OK


def cmd_init(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    target = Path(args.output)
    if target.exists() and not args.force:
        raise envelope.CliError(f"suite init: {target} exists (--force replaces it)", envelope.EXIT_USAGE,
                                "file_exists")
    name = args.name or target.name.removesuffix(".yaml").removesuffix(".yml").removesuffix(".suite")
    made = starter.starter(name, _cases(args.cases), target.resolve().parent)
    for warning in made.warnings:
        print(f"softprobe: suite init: {warning}", file=sys.stderr)
    if not made.cases:
        raise envelope.CliError("suite init: no case records an inbound request to send: no suite written",
                                envelope.EXIT_INVALID, "no_cases")
    header = (f"# A starting suite written by `softprobe suite init` from {made.cases} case files: each case\n"
              "# sends its recorded request again, its outbound calls mocked from the case, the answer\n"
              "# checked to contain the recorded one. Check it with `softprobe suite validate`.\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(header + yaml.safe_dump(made.document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    print(f"{target}: suite {name}, {made.cases} cases, {made.mocks} mocks", file=out)
    envelope.report(out, suite=name, path=str(target), cases=made.cases, mocks=made.mocks, warnings=made.warnings)
    return envelope.EXIT_OK


def _cases(patterns: list[str]) -> list[caseview.CaseFile]:
    """The case files the arguments name (files or globs), read; CaseError (exit 5) for one that is not."""
    return [caseview.read(Path(path)) for path in matching_files(patterns)]
