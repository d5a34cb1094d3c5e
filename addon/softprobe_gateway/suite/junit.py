"""`suite run --junit PATH`: the run as JUnit XML, the shape CI systems read (Jenkins, GitHub
Actions, GitLab CI, CircleCI), as Softprobe's CLI reference says: one `<testsuite>` named after the
suite, one `<testcase>` per case with the `caseId` in `name` and the case file in `classname`, a
`<failure>` holding the case's failure line (`message`) and every difference (text), `<skipped>` for
a case the suite or `--fail-fast` did not run.

Case data is hostile input: the characters XML 1.0 cannot carry (most control characters) are
replaced, everything else is escaped by the serializer.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from softprobe_gateway.suite.results import CaseResult, DiffEntry, SuiteResult

# Not allowed in an XML 1.0 document, even escaped.
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
SHOWN = 200  # characters of a value in a diff line


def write(result: SuiteResult, path: str | Path) -> None:
    """Write the report (parent directories made), replacing the file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(document(result), encoding="utf-8")


def document(result: SuiteResult) -> str:
    """The JUnit XML of a run."""
    counts = {"tests": str(result.total), "failures": str(result.failed), "errors": "0",
              "skipped": str(result.skipped), "time": _seconds(result.duration_ms)}
    top = ET.Element("testsuites", {"name": _text(result.name), **counts})
    suite = ET.SubElement(top, "testsuite", {"name": _text(result.name), **counts})
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", {"name": "suite.path", "value": _text(result.path)})
    for case in result.cases:
        suite.append(testcase(case))
    if result.notes:
        ET.SubElement(suite, "system-out").text = _text("\n".join(result.notes))
    ET.indent(top)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(top, encoding="unicode") + "\n"


def testcase(case: CaseResult) -> ET.Element:
    element = ET.Element("testcase", {"classname": _text(case.path), "name": _text(case.case_id),
                                      "time": _seconds(case.duration_ms)})
    if case.status == "failed":
        failure = ET.SubElement(element, "failure", {"message": _text(case.failure), "type": _kind(case)})
        failure.text = _text("\n".join(failure_lines(case)))
    elif case.status == "skipped":
        ET.SubElement(element, "skipped", {"message": _text("; ".join(case.notes))})
    out = [*case.notes] if case.status != "skipped" else []
    if case.session_id:
        out.append(f"session: {case.session_id}")
    if out:
        ET.SubElement(element, "system-out").text = _text("\n".join(out))
    return element


def failure_lines(case: CaseResult) -> list[str]:
    """What a person reads under a failed case in CI: the failure, then each difference."""
    lines = [case.failure] if case.failure else []
    lines += [f"{case.label}: " + diff_line(d) for d in case.diffs]
    return lines


def diff_line(diff: DiffEntry) -> str:
    """One difference as a line: where, what was expected, what came, why (and which hook said so)."""
    where = "status" if diff.what == "status" else f"{diff.what} {diff.where}"
    said = f"expected {_show(diff.expected)}, got {_show(diff.actual)}"
    extra = "; ".join(x for x in (diff.reason if diff.reason != "differs" else "", diff.source) if x)
    return f"{where}: {said}" + (f"  ({extra})" if extra else "")


def _kind(case: CaseResult) -> str:
    """The failure's `type`: what kind of check failed (a CI system groups by it)."""
    if not case.diffs:
        return "error"  # a step before the comparison: the runtime, a hook, findInCase
    return f"{case.diffs[0].what}-mismatch"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}"


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)
