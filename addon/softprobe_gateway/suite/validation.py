"""`suite validate SUITE.yaml`: what would stop a suite's cases before any runs, found without a
runtime or an app (Softprobe's suite reference, "Validation"): `cases` that name no file or no case
file, hooks no `--hooks` file defines, `match` predicates and a `policy` the runtime would refuse
(checked by the runtime's own checks, `control_api.refusal`), JSONPaths that do not parse
(`body.ignore`, `body.redactions`, `bodyJsonPath`), assertions that cannot be evaluated, and a
`source: case` mock that does not find exactly one span of its case (Softprobe's `findInCase`).

Each problem is one line naming the case entry and the key. A problem of the suite's defaults is
reported once, not once per case.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from softprobe_gateway.formats.casefile import CaseError
from softprobe_gateway.server.control_api import refusal
from softprobe_gateway.suite import caseview, compare
from softprobe_gateway.suite.caseview import CaseFile, CaseLookupError
from softprobe_gateway.suite.model import PlannedCase, Suite

REQUEST_SOURCES = ("case.ingress", "inline")


def problems(suite: Suite, hook_names: set[str] | None) -> list[str]:
    """Every problem of the suite; `hook_names` are the names the `--hooks` files define (None:
    no `--hooks` given, so any hook the suite names is unknown)."""
    found = list(suite.unresolved())
    seen_plans: dict[str, str] = {}
    read: dict[str, CaseFile | None] = {}
    for case in suite.cases():
        label = case.display_path() + (f" [{case.name}]" if case.name else "")
        for problem in plan_problems(case.plan, hook_names):
            if problem not in seen_plans:  # the defaults' problems once, under the first case
                seen_plans[problem] = label
                found.append(f"{label}: {problem}")
        if not case.path.is_file():
            continue  # unresolved, said above
        key = str(case.path)
        if key not in read:
            try:
                read[key] = caseview.read(case.path)
            except CaseError as e:
                read[key] = None
                found.append(f"{label}: not a case file: {e}")
        if read[key] is not None:
            found += [f"{label}: {p}" for p in lookup_problems(case, read[key])]
    return found


def plan_problems(plan: dict[str, Any], hook_names: set[str] | None) -> list[str]:
    """The problems of one case's merged plan that need no case file."""
    found = []
    for where, name in hook_references(plan):
        if hook_names is None:
            found.append(f'{where}: hook "{name}": no --hooks file given')
        elif name not in hook_names:
            found.append(f'{where}: hook "{name}" is defined by no --hooks file')
    for index, mock in enumerate(plan.get("mocks") or []):
        found += [f"mocks[{index}] {mock.get('name') or ''}".rstrip() + f": {p}" for p in _mock_problems(mock)]
    found += _request_problems(plan.get("request") or {})
    found += _assertion_problems(plan.get("assertions") or {})
    if plan.get("policy") is not None and (said := refusal("policy", plan["policy"])):
        found.append(said)
    return found


def lookup_problems(case: PlannedCase, loaded: CaseFile) -> list[str]:
    """Each `source: case` mock finds exactly one span of the case; a `case.ingress` request needs one."""
    found = []
    for index, mock in enumerate(case.plan.get("mocks") or []):
        if (mock.get("source") or ("inline" if "response" in mock else "case")) != "case":
            continue
        try:
            loaded.find(dict(mock.get("match") or {}))
        except CaseLookupError as e:
            found.append(f"mocks[{index}] {mock.get('name') or ''}".rstrip() + f": {e}")
        except (TypeError, AttributeError):
            pass  # a malformed predicate, said by plan_problems
    request = case.plan.get("request") or {}
    wants_ingress = request.get("source") == "case.ingress" or not (request.get("method") or request.get("path")
                                                                      or isinstance(request.get("source"), dict))
    if wants_ingress and loaded.ingress() is None:
        found.append("request: the case records no inbound request to send (give method and path)")
    return found


def hook_references(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, hook name) for every hook a plan names."""
    request = plan.get("request") or {}
    if isinstance(request, dict) and request.get("transform"):
        yield "request.transform", str(request["transform"])
    for index, mock in enumerate(plan.get("mocks") or []):
        if isinstance(mock, dict) and mock.get("hook"):
            yield f"mocks[{index}].hook", str(mock["hook"])
    assertions = plan.get("assertions") or {}
    for where, holder, key in (("assertions.body.custom", assertions.get("body"), "custom"),
                               ("assertions.headers.custom", assertions.get("headers"), "custom"),
                               ("assertions.custom-headers", assertions, "custom-headers")):
        if isinstance(holder, dict) and holder.get(key):
            yield where, str(holder[key])


def _mock_problems(mock: dict[str, Any]) -> list[str]:
    match = mock.get("match") or {}
    rule: dict[str, Any] = {"when": match, "then": {"action": "mock", "response": {}}}
    rule.update((k, mock[k]) for k in ("priority", "consume") if k in mock)
    found = []
    if said := refusal("rules", {"version": 1, "rules": [rule]}):
        found.append(said.removeprefix("rules[0]").lstrip(".: ").replace("when", "match", 1))
    paths = [match["bodyJsonPath"]] if isinstance(match.get("bodyJsonPath"), str) else []
    if isinstance(match.get("bodyJsonPathEquals"), dict):
        paths += list(match["bodyJsonPathEquals"])
    found += [f"match: {p}" for p in compare.paths_invalid(paths)]
    source = mock.get("source") or ("inline" if "response" in mock else "case")
    if source not in ("case", "inline"):
        found.append(f"source {source!r}: `case` or `inline` expected")
    elif source == "inline" and not isinstance(mock.get("response"), dict):
        found.append("source inline needs a response: {status, headers, body}")
    return found


def _request_problems(request: dict[str, Any]) -> list[str]:
    source = request.get("source")
    if source is not None and not isinstance(source, dict) and source not in REQUEST_SOURCES:
        return [f"request.source {source!r}: `case.ingress` or an inline request expected"]
    return []


def _assertion_problems(assertions: dict[str, Any]) -> list[str]:
    found = []
    body = assertions.get("body") or {}
    checks = (lambda: compare.status_diffs(assertions.get("status"), 200, None),
              lambda: compare.header_diffs(assertions.get("headers") or {}, {}),
              lambda: compare.body_diffs({"mode": body.get("mode")}, "", "") if isinstance(body, dict) else None)
    for check in checks:
        try:
            check()
        except compare.AssertionSpecError as e:
            found.append(str(e))
    if not isinstance(body, dict):
        return [*found, "assertions.body: a mapping expected"]
    found += [f"assertions.body.ignore: {p}" for p in compare.paths_invalid(list(body.get("ignore") or []))]
    for index, rule in enumerate(body.get("redactions") or []):
        if not isinstance(rule, dict) or not isinstance(rule.get("path"), str):
            found.append(f"assertions.body.redactions[{index}]: {{path, replacement}} expected")
        else:
            found += [f"assertions.body.redactions[{index}]: {p}" for p in compare.paths_invalid([rule["path"]])]
    return found
