"""`suite run`: every case as the guide's per-case steps say (`run-a-suite-at-scale.md`, "What the
CLI does per case"): start a replay session on the runtime, load the case, register the mocks as
rules, set the policy, send the request to the app with `x-softprobe-session-id`, compare, close.

Cases run `parallel` at a time on threads (the work is HTTP; the runtime keeps the sessions apart);
`fail_fast` starts no case after a failure (those not started are skipped). The control API is
spoken through the CLI's one client, `cli.session.Runtime`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import httpx

from softprobe_gateway.capture.encoding import SENSITIVE_HEADERS
from softprobe_gateway.cli.session import Runtime, SessionError
from softprobe_gateway.formats.casefile import CaseError
from softprobe_gateway.suite import building, caseview, compare, noise
from softprobe_gateway.suite.hooks import HookError, Hooks
from softprobe_gateway.suite.model import PlannedCase, Suite
from softprobe_gateway.suite.results import CaseResult, DiffEntry, HttpMessage, MockUsed, SuiteResult

SESSION_HEADER = "x-softprobe-session-id"
MASK = "***"  # a secret header's value in results and reports (the request itself carries it)
APP_TIMEOUT_S = 30.0
# The request under test reaches the app: an ingress gateway that looks up (enable_inject) is
# never answered from the loaded case's recorded ingress or an older recording of it. Lowest
# priority, so a suite's own rule still wins; on Softprobe's runtime a passthrough is a miss.
INGRESS_PASSTHROUGH = {"id": "softprobe-suite-ingress", "priority": -1_000_000,
                       "when": {"direction": "inbound"}, "then": {"action": "passthrough"}}


@dataclass(frozen=True)
class Settings:
    runtime_url: str
    app_url: str = ""
    parallel: int = 1
    fail_fast: bool = False
    detect_noise: bool = False  # each case replayed once more first (suite.noise)


class _CaseFailed(Exception):
    """Stops a case at the step that failed; the message is the case's failure line."""


def run(suite: Suite, cases: list[PlannedCase], settings: Settings, hooks: Hooks | None = None,
        on_result: Callable[[CaseResult], None] | None = None) -> SuiteResult:
    """Run `cases` (suite order kept in the result, whatever order they finish in)."""
    started = time.monotonic()
    runtime = Runtime(settings.runtime_url)
    app = httpx.Client(trust_env=False, timeout=APP_TIMEOUT_S, follow_redirects=False,
                       limits=httpx.Limits(max_connections=max(settings.parallel, 1) * 2))
    stop = threading.Event()

    def one(case: PlannedCase) -> CaseResult:
        if case.skip:
            result = _skipped(case, "skipped by the suite (skip/only)")
        elif stop.is_set():
            result = _skipped(case, "not run: --fail-fast after a failure")
        else:
            result = run_case(case, suite, runtime, app, settings, hooks)
            if result.status == "failed" and settings.fail_fast:
                stop.set()
        if on_result is not None:
            on_result(result)
        return result

    try:
        with ThreadPoolExecutor(max_workers=max(1, settings.parallel)) as pool:
            results = list(pool.map(one, cases))
    finally:
        app.close()
        runtime.client.close()
    return SuiteResult(suite.name, str(suite.path), tuple(results), _ms(started))


def run_case(case: PlannedCase, suite: Suite, runtime: Runtime, app: httpx.Client, settings: Settings,
             hooks: Hooks | None) -> CaseResult:
    started = time.monotonic()
    state: dict[str, Any] = {"case_id": case.name or case.display_path()}
    try:
        probe = _probe(case, suite, runtime, app, settings, hooks) if settings.detect_noise else None
        _steps(case, suite, runtime, app, settings, hooks, state)
        if settings.detect_noise:
            state["diffs"], state["notes"] = noise.apply(state["diffs"], probe, state.get("response"))
        failure = _summary(state["diffs"])
    except _CaseFailed as e:
        failure = str(e)
    finally:
        _close(runtime, state)
    keep = failure != ""  # a passed case's bodies are not kept: bounded memory
    return CaseResult(
        case_id=state["case_id"], name=case.name, path=case.display_path(),
        status="failed" if failure else "passed", duration_ms=_ms(started), failure=failure,
        diffs=tuple(state.get("diffs", ())),
        mocks=tuple(replace(m, response=_kept(m.response, keep)) for m in state.get("mocks", ())),
        request=_kept(state.get("request"), keep), response=_kept(state.get("response"), keep),
        expected=_kept(state.get("expected"), keep),
        session_id=state.get("session_id", ""), notes=tuple(state.get("notes", ())))


def _kept(message: HttpMessage | None, body: bool) -> HttpMessage | None:
    """What results (and so reports) keep of a message: secret headers masked, the body only when asked."""
    if message is None:
        return None
    headers = {k: MASK if k.lower() in SENSITIVE_HEADERS else v for k, v in message.headers.items()}
    return replace(message, headers=headers, body=message.body if body else "")


def _probe(case: PlannedCase, suite: Suite, runtime: Runtime, app: httpx.Client, settings: Settings,
           hooks: Hooks | None) -> HttpMessage | None:
    """`--detect-noise`: the case replayed once before its run, in a session of its own; its answer
    (None when it failed before one came: the run then fails the same way, saying why)."""
    state: dict[str, Any] = {"case_id": ""}
    try:
        _steps(case, suite, runtime, app, settings, hooks, state)
    except _CaseFailed:
        return None
    finally:
        _close(runtime, state)
    return state.get("response")


def _close(runtime: Runtime, state: dict[str, Any]) -> None:
    if state.get("session_id"):
        try:
            runtime.call("POST", f"/v1/sessions/{state['session_id']}/close")
        except SessionError:
            pass  # the case's outcome stands; the session expires with the runtime


def _steps(case: PlannedCase, suite: Suite, runtime: Runtime, app: httpx.Client, settings: Settings,
           hooks: Hooks | None, state: dict[str, Any]) -> None:
    plan = case.plan
    try:
        loaded = caseview.read(case.path)
    except CaseError as e:
        raise _CaseFailed(f"read case: {e}") from None
    if not case.name and loaded.case_id:
        state["case_id"] = loaded.case_id
    sid = str(_call(runtime, "start session", "POST", "/v1/sessions", {"mode": "replay"}).get("sessionId") or "")
    if not sid:
        raise _CaseFailed("start session: the runtime answered without a sessionId")
    state["session_id"] = sid
    _call(runtime, "load-case", "POST", f"/v1/sessions/{sid}/load-case", loaded.document)
    context = {"caseId": state["case_id"], "sessionId": sid, "case": loaded.document, "env": suite.env,
               "caseFile": str(case.path)}
    try:
        used: list[MockUsed] = building.mocks(plan.get("mocks") or [], loaded, hooks, context)
        state["mocks"] = used
        _call(runtime, "register rules", "POST", f"/v1/sessions/{sid}/rules",
              {"version": 1, "rules": [*(building.rule(m) for m in used), INGRESS_PASSTHROUGH]})
        if plan.get("policy"):
            _call(runtime, "set policy", "POST", f"/v1/sessions/{sid}/policy", plan["policy"])
        sent = building.request(plan.get("request"), loaded, settings.app_url, hooks, context)
    except building.PlanError as e:
        raise _CaseFailed(("resolve mocks: " if str(e).startswith("mocks[") else "build request: ") + str(e)) from None
    state["request"] = sent
    ingress = loaded.ingress()
    expected = caseview.response_of(ingress) if ingress is not None else None
    state["expected"] = expected
    actual = _send(app, sent, sid)
    assertions = plan.get("assertions") or {}
    try:
        outcome = compare.compare(assertions, actual, expected)
    except compare.AssertionSpecError as e:
        raise _CaseFailed(f"assertions: {e}") from None
    state["response"] = HttpMessage(status=actual.status, headers=actual.headers, body=outcome.body)
    state["diffs"] = outcome.diffs + _custom(assertions, actual, expected, hooks, context)


def _custom(assertions: dict[str, Any], actual: HttpMessage, expected: HttpMessage | None,
            hooks: Hooks | None, context: dict[str, Any]) -> list[DiffEntry]:
    """The BodyAssertHook (`body.custom`) and HeadersAssertHook (`headers.custom`, or the
    reference's `custom-headers`) issues, as diff entries."""
    diffs = []
    body_hook = (assertions.get("body") or {}).get("custom")
    header_spec = assertions.get("headers") or {}
    header_hook = header_spec.get("custom") or assertions.get("custom-headers")
    shared = {"case": context["case"], "env": context["env"], "ctx": {"caseId": context["caseId"],
              "sessionId": context["sessionId"], "direction": "inbound"}}
    for name, kind, what, payload in (
            (body_hook, "assert_body", "body", lambda: {
                "actual": compare.parsed(actual.body), "captured": compare.parsed(expected.body) if expected else None}),
            (header_hook, "assert_headers", "header", lambda: {
                "actual": compare.without_ignored(actual.headers, header_spec),
                "captured": compare.without_ignored(expected.headers, header_spec) if expected else {}})):
        if not name:
            continue
        if hooks is None:
            raise _CaseFailed(f'assertions: hook "{name}" not found: no --hooks file was given')
        try:
            issues = hooks.call(name, kind, {**payload(), **shared})
        except HookError as e:
            raise _CaseFailed(f"assertions: {e}") from None
        if issues is None:
            continue
        if not isinstance(issues, list):
            raise _CaseFailed(f'assertions: hook "{name}" returned {type(issues).__name__}, Issue[] expected')
        for issue in issues:
            issue = issue if isinstance(issue, dict) else {"reason": str(issue)}
            if issue:
                diffs.append(DiffEntry(what, str(issue.get("path", "")), issue.get("expected"), issue.get("actual"),
                                       str(issue.get("reason") or ""), source=name))
    return diffs


def _send(app: httpx.Client, request: HttpMessage, session_id: str) -> HttpMessage:
    headers = {**request.headers, SESSION_HEADER: session_id}
    try:
        reply = app.request(request.method, request.url, headers=headers,
                            content=request.body.encode() if request.body else None)
    except httpx.HTTPError as e:
        raise _CaseFailed(f"app {request.url}: {type(e).__name__}: {e}") from None
    received: dict[str, str] = {}
    for name, value in reply.headers.multi_items():
        received[name] = f"{received[name]}, {value}" if name in received else value
    return HttpMessage(status=reply.status_code, headers=received, body=reply.content.decode("utf-8", "replace"))


def _call(runtime: Runtime, step: str, method: str, path: str, document: Any = None) -> dict[str, Any]:
    try:
        return runtime.call(method, path, document)
    except SessionError as e:
        raise _CaseFailed(f"{step}: {e}") from None


def _summary(diffs: list[DiffEntry]) -> str:
    """The case's failure line: its first difference, and how many more."""
    if not diffs:
        return ""
    first = diffs[0]
    where = f"{first.what} {first.where}".strip() if first.what != "status" else "status"
    said = f"expected {json.dumps(first.expected, default=str)}, got {json.dumps(first.actual, default=str)}"
    by = f" ({first.source})" if first.source else ""
    reason = f": {first.reason}" if first.reason and first.reason != "differs" else ""
    more = f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else ""
    return f"{where}{by}: {said}{reason}{more}"


def _skipped(case: PlannedCase, why: str) -> CaseResult:
    return CaseResult(case_id=case.name or case.display_path(), name=case.name, path=case.display_path(),
                      status="skipped", duration_ms=0, notes=(why,))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
