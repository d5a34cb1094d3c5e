"""`softprobe validate case|rules|suite FILE`: a file checked against Softprobe's published schema
(`formats.schemas`) before a run trips over it; a case also as this project reads it (its OTLP
spans decoded); a suite is `suite validate` itself (Softprobe publishes no suite schema: its checks
are the suite reference's). Exit 0 when valid, 5 when not, as Softprobe's CLI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

import yaml

from softprobe_gateway.cli import envelope, suite_authoring
from softprobe_gateway.cli.common import verdict
from softprobe_gateway.formats import schemas
from softprobe_gateway.formats.casefile import CaseError, case_exchanges


def register(commands: argparse._SubParsersAction) -> None:
    about = "check a case, rules or suite file against Softprobe's published schemas"
    actions = commands.add_parser("validate", help=about, description=about).add_subparsers(
        required=True, metavar="KIND")
    for kind, run, what in (("case", cmd_case, "a *.case.json file"),
                            ("rules", cmd_rules, "a rules file, JSON or YAML ({rules: [...]} or a list)")):
        parser = actions.add_parser(kind, help=f"validate {what}")
        parser.add_argument("file", metavar="FILE", help=what)
        parser.set_defaults(command=run)
    suite = actions.add_parser("suite", help="validate a *.suite.yaml: `softprobe suite validate`")
    suite.add_argument("suite", metavar="SUITE.yaml")
    suite.add_argument("--hooks", action="append", default=[], metavar="PATH",
                       help="the hook files the suite's hooks must be in (as for suite run)")
    suite.add_argument("--env-file", metavar="PATH", help="KEY=VALUE lines for ${VAR} (the shell's environment wins)")
    suite.set_defaults(command=suite_authoring.cmd_validate)


def _read(path: str, yaml_too: bool) -> tuple[Any, list[str]]:
    """The parsed file, or the one error that stops it being parsed (a file that cannot be read
    at all is not invalid: exit 1)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise envelope.CliError(f"{path}: {e.strerror or e}", code="io_error") from None
    except UnicodeDecodeError as e:
        return None, [f"$: not UTF-8 text: {e}"]
    try:
        return yaml.safe_load(text), []  # YAML is a superset of JSON: one parser for both
    except yaml.YAMLError as e:
        return None, [f"$: not {'JSON or YAML' if yaml_too else 'JSON'}: {str(e).splitlines()[0]}"]


def cmd_case(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    document, problems = _read(args.file, yaml_too=False)
    if not problems:
        problems = schemas.errors(document, schemas.CASE)
    if not problems:  # valid by the schema: then its spans as this project's tools decode them
        try:
            case_exchanges(document)
        except CaseError as e:
            problems = [f"$: {e}"]
    return verdict(out, args.file, problems)


def cmd_rules(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    document, problems = _read(args.file, yaml_too=True)
    if not problems:
        problems = schemas.errors(schemas.rules_document(document), schemas.RULES)
    return verdict(out, args.file, problems)
