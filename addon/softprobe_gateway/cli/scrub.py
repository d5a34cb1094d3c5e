"""`softprobe scrub FILE|GLOB...`: the gateway's redaction applied to case files in place, for a
case recorded before a rule existed or by another tool (a Softprobe capture keeps credentials
the gateway would have dropped). The rules are the gateway config's `redaction` and `capture`
sections (`--config`/`--rules`, else $SOFTPROBE_CONFIG, else the built-in defaults), the very
rules live traffic is recorded under (`capture.scrubbing`). Every file is read and scrubbed before
the first is written; a file that nothing changes is left untouched."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import TextIO

from softprobe_gateway.capture.encoding import Capture
from softprobe_gateway.capture.scrubbing import scrub_case
from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import Settings, matching_files, read_json
from softprobe_gateway.formats.casefile import CaseError
from softprobe_gateway.config.loader import CONFIG_ENV


def register(commands: argparse._SubParsersAction) -> None:
    scrub = commands.add_parser("scrub", help="redact secrets in case files, in place", description=__doc__.split("\n\n")[0])
    scrub.add_argument("files", nargs="+", metavar="FILE|GLOB", help="case files, or quoted globs ('cases/**/*.case.json')")
    scrub.add_argument("--config", "--rules", dest="config", metavar="FILE",
                       help=f"the gateway config whose redaction and capture rules apply (default: ${CONFIG_ENV})")
    scrub.set_defaults(command=cmd_scrub, db=None)


def cmd_scrub(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    capture = Capture(settings.config.capture, settings.config.redaction)
    scrubbed = []
    for path in matching_files(args.files):
        _, case = read_json(str(path), CaseError)
        if not isinstance(case, dict) or not isinstance(case.get("traces"), list):
            raise CaseError(f"{path}: not a Softprobe case: no traces[] list")
        scrubbed.append((path, case, scrub_case(case, capture)))
    report = []
    for path, case, changes in scrubbed:
        changed = bool(changes.redacted or changes.dropped)
        if changed:
            _replace(path, json.dumps(case, indent=2, ensure_ascii=False) + "\n")
        report.append({"path": str(path), "changed": changed, "redacted": changes.redacted,
                       "dropped": changes.dropped})
        print(f"{path}: " + (f"{changes.redacted} values redacted, {changes.dropped} header attributes dropped"
                             if changed else "nothing to redact"), file=out)
    envelope.report(out, files=report, changed=sum(f["changed"] for f in report))
    return envelope.EXIT_OK


def _replace(path: Path, text: str) -> None:
    """Write beside the file and rename over it: a reader never sees half a case, the mode is kept."""
    mode = path.stat().st_mode & 0o777
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".scrub")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
