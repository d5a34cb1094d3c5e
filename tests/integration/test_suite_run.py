"""`softprobe suite run` feature by feature against a real `softprobe serve` and real apps on
loopback: the recorded ingress sent again and compared, inline requests, Python hooks, volatile
fields, --parallel, --fail-fast, --json, the exit codes; and the mocks (priority, latency, policy,
findInCase) through the fragment stack's two gateways."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from softprobe_gateway.suite import model, runner
from testkit.cli import run
from testkit.serve import Backend
from testkit.suite_app import FragmentStack, fragment_stack, ingress_case
from testkit.support import HttpServer, Received, Reply, free_port

SLOW_S = 0.3


class OrdersApp(HttpServer):
    """An app whose answers a suite compares: `/echo` says what it received, `/order` carries a
    fresh id and time, `/slow` takes SLOW_S and counts how many it serves at once."""

    def __init__(self) -> None:
        self.in_flight = self.most = 0
        lock = threading.Lock()

        def handle(got: Received) -> Reply:
            path = got.path.split("?", 1)[0]
            json_type = {"content-type": "application/json"}
            if path == "/echo":
                seen = {"method": got.method, "path": got.path, "body": got.body.decode(),
                        "tenant": got.headers.get("x-tenant", ""), "auth": got.headers.get("authorization", ""),
                        "session": bool(got.headers.get("x-softprobe-session-id"))}
                return 200, {**json_type, "x-request-id": uuid.uuid4().hex}, json.dumps(seen).encode()
            if path == "/order":
                order = {"id": uuid.uuid4().hex, "createdAt": time.time(), "total": 30, "status": "paid"}
                return 200, json_type, json.dumps(order).encode()
            if path == "/slow":
                with lock:
                    self.in_flight += 1
                    self.most = max(self.most, self.in_flight)
                time.sleep(SLOW_S)
                with lock:
                    self.in_flight -= 1
                return 200, json_type, b'{"slow": true}'
            return 404, json_type, b'{"error": "no such path"}'

        super().__init__(handle)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with Backend(tmp_path_factory.mktemp("suite-run") / "runtime.db") as backend:
        yield backend


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cases are shown relative to the working directory: the test's own."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def app() -> Iterator[OrdersApp]:
    with OrdersApp() as server:
        yield server


def suite(tmp: Path, text: str, name: str = "t.suite.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def run_suite(capsys, runtime: Backend, app_url: str, *args: object) -> tuple[int, str, str]:
    return run(capsys, "suite", "run", "--runtime-url", runtime.url, "--app-url", app_url, *args)


def test_the_recorded_ingress_is_sent_again_and_its_answer_compared(capsys, tmp_path: Path, runtime: Backend,
                                                                    app: OrdersApp) -> None:
    recorded = {"method": "POST", "path": "/echo?page=2", "body": '{"qty": 2}', "tenant": "t1", "auth": "",
                "session": True}
    ingress_case(tmp_path / "same.case.json", "same", "POST", "/echo?page=2", 200, recorded, '{"qty": 2}',
                 {"x-tenant": "t1", "content-type": "application/json", "host": "orders.test", "traceparent": "x"})
    ingress_case(tmp_path / "changed.case.json", "changed", "POST", "/echo?page=2", 200, {**recorded, "tenant": "t9"},
                 '{"qty": 2}', {"x-tenant": "t1"})
    path = suite(tmp_path, "name: ingress\ncases: '*.case.json'\n"
                           "assertions: {headers: {include: {x-request-id: '^[0-9a-f]{32}$'}}}\n")
    code, out, err = run_suite(capsys, runtime, app.url, path, "--json")
    report = json.loads(out)
    assert (code, report["passed"], report["failed"]) == (20, 1, 1), err
    changed, same = report["cases"]  # sorted by path: changed.case.json first
    assert (same["caseId"], same["status"], changed["caseId"]) == ("same", "passed", "changed")
    assert changed["diffs"] == [{"what": "body", "where": "$.tenant", "expected": "t9", "actual": "t1",
                                 "reason": "differs"}]
    assert changed["error"] == 'body $.tenant: expected "t9", got "t1"'
    assert report["exitCode"] == 20 and report["status"] == "fail"


def test_an_inline_request_with_env_and_python_hooks(capsys, tmp_path: Path, runtime: Backend, app: OrdersApp,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "checkout.py").write_text('''
import json

def unmask(request, env, **_):
    body = json.loads(request["body"])
    body["card"] = env["TEST_CARD"]
    return {"body": json.dumps(body), "headers": {"x-tenant": "from-hook"}}

def card_passed(actual, captured, case, env):
    got = json.loads(actual["body"])
    return [] if got["card"] == env["TEST_CARD"] and captured is None else [{"path": "$.body.card", "actual": got}]
''')
    (tmp_path / "case.case.json").write_text(json.dumps({"version": "1.0.0", "caseId": "no-ingress", "traces": []}))
    monkeypatch.setenv("TEST_CARD", "4242")
    path = suite(tmp_path, """
name: inline
env: {TOKEN: suite-token}
cases: case.case.json
request:
  method: post
  path: /echo
  headers: {authorization: "Bearer ${TOKEN}"}
  body: '{"card": "****"}'
  transform: checkout.unmask
assertions:
  status: [200, 201]
  body: {custom: card_passed}
""")
    code, out, err = run_suite(capsys, runtime, app.url, path, "--hooks", tmp_path / "checkout.py", "--json")
    assert code == 0, out + err
    assert json.loads(out)["cases"][0]["caseId"] == "no-ingress"  # the case file's id when the entry has no name
    (tmp_path / "token.env").write_text("TOKEN=file-token\n")
    code, out, err = run_suite(capsys, runtime, app.url, path, "--hooks", tmp_path / "checkout.py",
                               "--env-file", tmp_path / "token.env")
    assert code == 0, out + err
    # the hook's view: what the app received, shown by a failing assertion
    (tmp_path / "see.py").write_text("def show(actual, **_):\n    return [{'path': '$', 'actual': actual}]\n")
    path.write_text(path.read_text().replace("custom: card_passed", "custom: show").replace("  transform: checkout.unmask\n", ""))
    code, out, err = run_suite(capsys, runtime, app.url, path, "--hooks", tmp_path / "see.py", "--env-file",
                               tmp_path / "token.env", "--json")
    seen = json.loads(out)["cases"][0]["diffs"][0]["actual"]
    assert seen == {"method": "POST", "path": "/echo", "body": '{"card": "****"}', "tenant": "",
                    "auth": "Bearer file-token", "session": True}


def test_volatile_fields_fail_until_ignored(capsys, tmp_path: Path, runtime: Backend, app: OrdersApp) -> None:
    ingress_case(tmp_path / "order.case.json", "order", "GET", "/order", 200,
                 {"id": "0" * 32, "createdAt": 1.0, "total": 30, "status": "paid"})
    path = suite(tmp_path, "name: orders\ncases: order.case.json\n")
    code, out, _ = run_suite(capsys, runtime, app.url, path)
    assert code == 20
    assert "  FAIL order.case.json (" in out  # shown relative to the working directory
    assert 'body $.id: expected "00000000000000000000000000000000", got "' in out and "(+1 more)" in out
    path.write_text("name: orders\ncases: order.case.json\nassertions: {body: {ignore: [$.id, $.createdAt]}}\n")
    code, out, _ = run_suite(capsys, runtime, app.url, path)
    assert code == 0, out
    assert out.splitlines()[-1] == "result: passed=1 failed=0 total=1"


def test_parallel_runs_cases_at_once(capsys, tmp_path: Path, runtime: Backend, app: OrdersApp) -> None:
    for i in range(6):
        ingress_case(tmp_path / f"slow{i}.case.json", f"slow{i}", "GET", "/slow", 200, {"slow": True})
    path = suite(tmp_path, "name: slow\ncases: '*.case.json'\n")
    started = time.monotonic()
    code, out, _ = run_suite(capsys, runtime, app.url, path, "--parallel", "6")
    at_once = time.monotonic() - started
    assert code == 0, out
    assert app.most >= 3, app.most
    app.most = 0
    started = time.monotonic()
    code, out, _ = run_suite(capsys, runtime, app.url, path, "--parallel", "1")
    one_by_one = time.monotonic() - started
    assert code == 0 and app.most == 1
    assert one_by_one >= 6 * SLOW_S and at_once < one_by_one / 2, (at_once, one_by_one)
    print(f"\n6 cases of {SLOW_S} s: --parallel 6 {at_once:.2f} s, --parallel 1 {one_by_one:.2f} s")


def test_fail_fast_starts_nothing_after_a_failure(capsys, tmp_path: Path, runtime: Backend, app: OrdersApp) -> None:
    for i in range(4):
        ingress_case(tmp_path / f"c{i}.case.json", f"c{i}", "GET", "/slow" if i else "/missing", 200, {"slow": True})
    path = suite(tmp_path, "name: ff\ncases:\n  - '*.case.json'\n  - {path: c1.case.json, name: skipped, skip: true}\n")
    code, out, _ = run_suite(capsys, runtime, app.url, path, "--parallel", "1", "--fail-fast")
    lines = out.splitlines()
    assert code == 20
    assert lines[1].startswith("  FAIL c0.case.json (") and "status: expected 200, got 404" in lines[1]
    case_lines = [line for line in lines if line.startswith("  ") and not line.startswith("   ")]
    assert [line.split()[0] for line in case_lines] == ["FAIL"] + ["SKIP"] * 4
    assert lines[2].startswith("       status: expected 200, got 404")  # its differences under it
    assert lines[-1] == "result: passed=0 failed=1 total=5"
    code, out, _ = run_suite(capsys, runtime, app.url, path, "--parallel", "1")
    assert out.splitlines()[-1] == "result: passed=3 failed=1 total=5"


def test_exit_codes(capsys, tmp_path: Path, runtime: Backend, app: OrdersApp) -> None:
    ingress_case(tmp_path / "a.case.json", "a", "GET", "/slow", 200, {"slow": True})
    good = suite(tmp_path, "name: ok\ncases: a.case.json\n")
    assert run_suite(capsys, runtime, app.url, good)[0] == 0
    code, _, err = run_suite(capsys, runtime, app.url, suite(tmp_path, "name: bad\ncases: [{pth: x}]\n", "bad.yaml"))
    assert code == 5 and "cases[0].path: required" in err
    code, _, err = run_suite(capsys, runtime, app.url, good, "--hooks", tmp_path / "none.py")
    assert code == 2 and "--hooks" in err and "no such file" in err
    code, _, err = run(capsys, "suite", "run", good, "--parallel", "0")
    assert code == 2
    code, out, _ = run(capsys, "suite", "run", "--runtime-url", f"http://127.0.0.1:{free_port()}", "--app-url", app.url,
                       good)
    assert code == 20 and "start session: runtime http://127.0.0.1:" in out and "unreachable" in out
    code, out, _ = run_suite(capsys, runtime, app.url, good, "--filter", "nothing-matches")
    assert code == 0 and out.splitlines()[-1] == "result: passed=0 failed=0 total=0"


def test_a_missing_or_raising_python_hook_fails_its_case_only(capsys, tmp_path: Path, runtime: Backend,
                                                             app: OrdersApp) -> None:
    ingress_case(tmp_path / "a.case.json", "a", "GET", "/slow", 200, {"slow": True})
    (tmp_path / "h.py").write_text("def boom(**_):\n    raise ValueError('totals do not add up')\n")
    path = suite(tmp_path, "name: hooks\ncases:\n  - {path: a.case.json, name: raising}\n"
                           "  - {path: a.case.json, name: missing, overrides: {assertions: {body: {custom: nope}}}}\n"
                           "  - {path: a.case.json, name: plain, overrides: {assertions: {}}}\n"
                           "assertions: {body: {custom: h.boom}}\n")
    code, out, _ = run_suite(capsys, runtime, app.url, path, "--hooks", tmp_path / "h.py")
    lines = out.splitlines()
    assert code == 20
    assert lines[1].endswith('assertions: hook "h.boom" failed: ValueError: totals do not add up')
    assert lines[2].endswith('assertions: hook "nope" not found in any --hooks file')
    assert lines[3].startswith("  OK   a.case.json [plain]")


# -- mocks, through the gateways ------------------------------------------------------------


@pytest.fixture(scope="module")
def fragment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FragmentStack]:
    with fragment_stack(tmp_path_factory.mktemp("suite-mocks")) as s:
        yield s


FRAGMENT_CASE = Path(__file__).resolve().parents[1] / "data/cli-suite-run/spec/examples/cases/fragment-happy-path.case.json"


def mock_suite(tmp: Path, mocks: str, assertions: str = "{}", policy: str = "") -> Path:
    return suite(tmp, f"name: mocks\ncases: [{{path: {FRAGMENT_CASE}, name: m}}]\n"
                      f"request: {{method: GET, path: /hello}}\nmocks: {mocks}\nassertions: {assertions}\n"
                      + (f"policy: {policy}\n" if policy else ""))


def mock_run(capsys, fragment: FragmentStack, path: Path, *args: object) -> dict:
    """The case's result in --json, the app behind the ingress gateway."""
    code, out, err = run(capsys, "suite", "run", "--runtime-url", fragment.runtime.url, "--app-url",
                         fragment.ingress.proxy, path, "--json", *args)
    assert code in (0, 20), err
    return json.loads(out)["cases"][0]


def dep_hook(tmp: Path, want: str) -> Path:
    """A BodyAssertHook: the app's `dep` (what /fragment answered it) is `want`."""
    hook = tmp / "see.py"
    hook.write_text(f"def dep_is(actual, **_):\n"
                    f"    return [] if actual['dep'] == {want!r} else [{{'path': '$.dep', 'expected': {want!r}, "
                    f"'actual': actual['dep']}}]\n")
    return hook


def test_priority_latency_and_a_python_mock_hook(capsys, tmp_path: Path, fragment: FragmentStack) -> None:
    (tmp_path / "mh.py").write_text("def stamp(captured_response, mock_name, **_):\n"
                                    "    return {'body': captured_response['body'].replace('ok', mock_name)}\n")
    path = mock_suite(tmp_path, "[{name: low, match: {path: /fragment}, response: {body: '{\"dep\":\"low\"}'}},"
                                " {name: high, match: {path: /fragment}, source: case, hook: mh.stamp, priority: 10,"
                                " latencyMs: 400}]", "{body: {custom: see.dep_is}}")
    case = mock_run(capsys, fragment, path, "--hooks", f"{tmp_path / 'mh.py'},{dep_hook(tmp_path, 'high')}")
    assert case["status"] == "passed", case
    assert case["durationMs"] >= 400
    path.write_text(path.read_text().replace("priority: 10", "priority: -10"))
    case = mock_run(capsys, fragment, path, "--hooks", f"{tmp_path / 'mh.py'},{tmp_path / 'see.py'}")
    assert case["diffs"][0]["actual"] == "low"  # the other mock wins now
    assert not fragment.upstream.received


def test_an_unresolvable_source_case_fails_the_case(capsys, tmp_path: Path, fragment: FragmentStack) -> None:
    path = mock_suite(tmp_path, "[{name: nothing, match: {path: /nowhere}, source: case},"
                                " {name: any, match: {direction: outbound}}]")
    case = mock_run(capsys, fragment, path)
    assert case["error"] == ('resolve mocks: mocks[0] "nothing": findInCase {"path": "/nowhere"}: '
                             "0 spans match, exactly one expected")


def test_a_strict_policy_refuses_what_no_mock_answers(capsys, tmp_path: Path, fragment: FragmentStack) -> None:
    """No mock: the egress gateway's call is refused (599), the app swallows it: `dep` is empty."""
    path = mock_suite(tmp_path, "[]", "{body: {mode: ignore, custom: see.dep_is}}", "{externalHttp: strict}")
    case = mock_run(capsys, fragment, path, "--hooks", dep_hook(tmp_path, ""))
    assert case["status"] == "passed", case
    assert not fragment.upstream.received


def test_the_api_token_is_the_bearer(capsys, tmp_path: Path, app: OrdersApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """$SOFTPROBE_API_TOKEN as `Authorization: Bearer`, which a keyed runtime requires; and what a
    passed case keeps (no bodies: a suite of thousands stays small), against a failed one."""
    ingress_case(tmp_path / "a.case.json", "a", "GET", "/slow", 200, {"slow": True})
    path = suite(tmp_path, "name: keyed\ncases: [{path: a.case.json, name: ok}, "
                           "{path: a.case.json, name: bad, overrides: {assertions: {status: 201}}}]\n")
    with Backend(tmp_path / "keyed.db", "k-suite-31f") as keyed:
        monkeypatch.delenv("SOFTPROBE_API_TOKEN", raising=False)
        code, out, _ = run_suite(capsys, keyed, app.url, path)
        assert code == 20 and "start session: POST /v1/sessions: 401 missing_bearer_token" in out
        monkeypatch.setenv("SOFTPROBE_API_TOKEN", "k-suite-31f")
        loaded = model.load(path, shell={})
        result = runner.run(loaded, loaded.cases(), runner.Settings(keyed.url, app.url))
    passed, failed = result.cases
    assert (passed.status, failed.status) == ("passed", "failed")
    assert passed.response.status == 200 and passed.response.body == "" and passed.expected.body == ""
    assert failed.response.body == '{"slow": true}' and failed.expected.body == '{"slow": true}'


def test_secret_headers_are_masked_in_what_is_kept(capsys, tmp_path: Path, runtime: Backend, app: OrdersApp) -> None:
    (tmp_path / "c.case.json").write_text(json.dumps({"version": "1.0.0", "caseId": "c", "traces": []}))
    path = suite(tmp_path, "name: secret\ncases: c.case.json\nassertions: {status: 500}\n"
                           "request: {method: GET, path: /echo, headers: {authorization: Bearer s3cr3t-t0ken, x-tenant: t}}\n")
    loaded = model.load(path, shell={})
    (case,) = runner.run(loaded, loaded.cases(), runner.Settings(runtime.url, app.url)).cases
    assert case.request.headers == {"authorization": "***", "x-tenant": "t"}
    assert json.loads(case.response.body)["auth"] == "Bearer s3cr3t-t0ken"  # the app got it
