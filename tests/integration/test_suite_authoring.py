"""From recorded traffic to a passing suite in three commands, against real processes: an app
behind an ingress gateway calling its dependency through an egress gateway (real mitmdump with the
addon), both recording into `softprobe serve`, which is the suite's runtime too. `case export --all`
writes a case per session, `suite init` a suite over them, `suite run --detect-noise` passes
although the app stamps every answer with the time and a new id (the commands as docs/suites.md
writes them); without `--detect-noise` that case fails on exactly those paths. Also `suite
validate` (exit 5, each problem named; the page's example and its output) and `suite diff`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import xmlschema
import yaml

from testkit.browser import chromium
from testkit.recording import FAST_EXPORT
from testkit.serve import Backend
from testkit.suite_app import fragment_upstream
from testkit.support import BIN, Gateway, HttpServer, Received, Reply, wait_for

DATA = Path(__file__).resolve().parents[1] / "data"
FRAGMENT_CASE = DATA / "cli-suite-run" / "spec" / "examples" / "cases" / "fragment-happy-path.case.json"
EXAMPLE = DATA / "cli-suite-run" / "e2e" / "cli-suite-run"
XSD = DATA / "junit" / "junit.xsd"
DOC = Path(__file__).resolve().parents[2] / "docs" / "suites.md"


def doc_block(language: str, containing: str) -> str:
    """The one fenced block of docs/suites.md in `language` holding `containing`."""
    found = re.findall(r"^```(\w*)\n(.*?)^```$", DOC.read_text(), re.DOTALL | re.MULTILINE)
    (block,) = [body for lang, body in found if lang == language and containing in body]
    return block


def stamping_app(egress_url: str) -> HttpServer:
    """`/flights` answers the same every time; `/quote` adds when it answered and a new id (the
    noise a first suite over production traffic trips on). Both call `/fragment` through the egress
    gateway, passing the trace context on (the session travels in `tracestate`)."""
    client = httpx.Client(trust_env=False, timeout=10)

    def handle(got: Received) -> Reply:
        context = {k: v for k, v in got.headers.items() if k in ("traceparent", "tracestate")}
        dep = client.get(f"{egress_url}/fragment", headers=context).json()["dep"]
        body: dict[str, object] = {"flight": "SP101", "price": 329, "dep": dep}
        if got.path.startswith("/quote"):
            body |= {"generatedAt": datetime.now(timezone.utc).isoformat(), "quoteId": str(uuid.uuid4())}
        return 200, {"content-type": "application/json"}, json.dumps(body).encode()

    return HttpServer(handle)


@dataclass
class Mesh:
    runtime: Backend
    ingress: Gateway
    upstream: HttpServer
    work: Path

    def softprobe(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOFTPROBE_", "APP_URL"))}
        env |= {"SOFTPROBE_RUNTIME_URL": self.runtime.url, "APP_URL": self.ingress.proxy}
        return subprocess.run([str(BIN / "softprobe"), *args], cwd=self.work, env=env, capture_output=True,
                              text=True, timeout=60)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("suite-authoring")
    with Backend(tmp / "runtime.db") as runtime, fragment_upstream() as upstream:
        # A lookup of a loaded machine that timed out would go to the live dependency: given time.
        config = {"sp_backend_url": runtime.url, "enable_inject": True, "export": FAST_EXPORT,
                  "lookup": {"timeout_ms": 2000}}
        with Gateway({**config, "traffic_direction": "outbound"}, tmp, mode=f"reverse:{upstream.url}") as egress, \
                stamping_app(egress.proxy) as app, \
                Gateway({**config, "traffic_direction": "inbound"}, tmp, mode=f"reverse:{app.url}") as ingress:
            with httpx.Client(base_url=ingress.proxy, trust_env=False, timeout=10) as client:
                for session, path in (("rec-flights", "/flights?from=SFO"), ("rec-quote", "/quote")):
                    assert client.get(path, headers={"x-softprobe-session-id": session}).status_code == 200
            for session in ("rec-flights", "rec-quote"):  # the ingress and the egress hop, in one session
                wait_for(lambda: runtime.client.get(f"/api/sessions/{session}").json().get("exchangeCount") == 2, 30)
            work = tmp / "work"
            work.mkdir()
            yield Mesh(runtime, ingress, upstream, work)


def documented(mesh: Mesh, command: str) -> subprocess.CompletedProcess:
    """A command of the page's three, run as written (its store the runtime's file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOFTPROBE_", "APP_URL"))}
    env |= {"SOFTPROBE_RUNTIME_URL": mesh.runtime.url, "APP_URL": mesh.ingress.proxy, "PATH": f"{BIN}:{env['PATH']}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", command.replace("suites.db", str(mesh.runtime.db))],
                          cwd=mesh.work, env=env, capture_output=True, text=True, timeout=60)


def test_record_export_init_run_is_three_commands_as_documented(mesh: Mesh) -> None:
    export, init, run = doc_block("sh", "suite init").strip().splitlines()
    exported = documented(mesh, export)
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in (mesh.work / "cases").iterdir()) == ["rec-flights.case.json", "rec-quote.case.json"]
    assert "cases/rec-quote.case.json: case rec-quote, 2 exchanges" in exported.stdout

    init = documented(mesh, init)
    assert init.returncode == 0, init.stderr
    assert init.stdout.strip() == "recorded.suite.yaml: suite recorded, 2 cases, 1 mocks"
    suite = yaml.safe_load((mesh.work / "recorded.suite.yaml").read_text())
    assert [(c["path"], c["name"]) for c in suite["cases"]] == [
        ("cases/rec-flights.case.json", "rec-flights"), ("cases/rec-quote.case.json", "rec-quote")]
    assert suite["defaults"]["request"] == {"source": "case.ingress"}
    [fragment] = suite["defaults"]["mocks"]  # the one outbound call both cases make, shared
    assert fragment["name"] == "get-fragment" and fragment["source"] == "case"
    assert fragment["match"] == {"direction": "outbound", "method": "GET", "host": fragment["match"]["host"],
                                 "path": "/fragment"}
    assert suite["defaults"]["assertions"] == {"body": {"mode": "json-subset"}}

    checked = mesh.softprobe("suite", "validate", "recorded.suite.yaml")
    assert (checked.returncode, checked.stdout.strip()) == (0, "recorded.suite.yaml: valid (suite recorded, 2 cases)")

    live_calls = len(mesh.upstream.received)
    run = documented(mesh, run)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[1].startswith("  OK   cases/rec-flights.case.json [rec-flights] (")
    assert lines[2].startswith("  OK   cases/rec-quote.case.json [rec-quote] (")
    assert lines[-1] == "result: passed=2 failed=0 total=2"
    assert len(mesh.upstream.received) == live_calls  # every /fragment answered by the mock

    xmlschema.XMLSchema(XSD).validate(str(mesh.work / "out" / "junit.xml"))
    cases = ET.parse(mesh.work / "out" / "junit.xml").getroot().findall(".//testcase")
    assert [(c.get("name"), c.get("classname")) for c in cases] == [
        ("rec-flights", "cases/rec-flights.case.json"), ("rec-quote", "cases/rec-quote.case.json")]
    noted = cases[1].find("system-out").text
    assert doc_block("text", "noise: ignored").strip() in noted
    assert cases[0].find("system-out").text.startswith("session: ")  # the same answer twice: no note
    assert "noise: ignored $.generatedAt, $.quoteId" in (mesh.work / "out" / "report.html").read_text()


def test_without_detect_noise_the_stamped_case_fails_on_the_stamps(mesh: Mesh) -> None:
    if not (mesh.work / "recorded.suite.yaml").exists():
        pytest.skip("needs the suite the three-command test writes")
    run = mesh.softprobe("suite", "run", "recorded.suite.yaml", "--json", "--report", "out/failed.html")
    report = json.loads(run.stdout)
    assert (run.returncode, report["exitCode"], report["passed"], report["failed"]) == (20, 20, 1, 1)
    quote = report["cases"][1]
    assert quote["caseId"] == "rec-quote" and quote["status"] == "failed"
    assert sorted(d["where"] for d in quote["diffs"]) == ["$.generatedAt", "$.quoteId"]
    with chromium() as browser:  # the real run's report, as a person opens it
        page = browser.new_page()
        page.goto((mesh.work / "out" / "failed.html").as_uri())
        page.screenshot(path=str(mesh.work / "out" / "failed.png"), full_page=True)
        rows = page.locator("section#case-1 table.diffs tbody tr")
        assert sorted(rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())) == [
            "$.generatedAt", "$.quoteId"]
        assert page.locator("section#case-1 table.mocks").inner_text().count("get-fragment") == 1
        assert page.locator("section#case-0").count() == 0  # the case that passed has a row, no section


def test_suite_validate_names_every_problem_and_exits_5(tmp_path: Path) -> None:
    shutil.copy(FRAGMENT_CASE, tmp_path / "fragment.case.json")
    (tmp_path / "not-a-case.case.json").write_text('{"traces": "no"}')
    (tmp_path / "hooks.py").write_text("def other(**_):\n    return None\n")
    (tmp_path / "broken.suite.yaml").write_text("""
name: broken
mocks:
  - {name: shared, match: {methd: GET}, response: {status: 200}}
cases:
  - cases/*.case.json
  - path: missing.case.json
  - path: not-a-case.case.json
  - path: fragment.case.json
    name: bad
    overrides:
      mocks:
        - {name: nowhere, match: {path: /nowhere}, source: case}
        - {name: typo, match: {hostsufix: stripe.com}, response: {status: 200}}
        - {name: jsonpath, match: {bodyJsonPath: "$.items[?(@.x =="}, response: {status: 200}}
        - {name: badsource, match: {path: /fragment}, source: somewhere}
      assertions:
        status: ok
        headers: {include: {etag: "(unclosed"}}
        body: {mode: fuzzy, ignore: ["$.fine", "$..[", 7], custom: noSuchHook}
      policy: {externalHttp: sometimes}
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTPROBE_")}
    done = subprocess.run([str(BIN / "softprobe"), "suite", "validate", "broken.suite.yaml", "--hooks", "hooks.py",
                           "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 5, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert (answer["status"], answer["exitCode"], answer["suite"], answer["valid"]) == ("fail", 5, "broken", False)
    errors = "\n".join(answer["errors"])
    for expected in ("cases[0]: 'cases/*.case.json' matches no file",
                     "cases[1]: ", "missing.case.json: no such case file",
                     "not-a-case.case.json: not a case file",
                     "mocks[0] shared: match: unknown field 'methd'",
                     'mocks[1] nowhere: findInCase {"path": "/nowhere"}: 0 spans match, exactly one expected',
                     "mocks[2] typo: match: unknown field 'hostsufix'",
                     "mocks[3] jsonpath: match: '$.items[?(@.x ==': not a JSONPath",
                     "mocks[4] badsource: source 'somewhere': `case` or `inline` expected",
                     "assertions.status: 'ok': an integer, a list or {min, max} expected",
                     "assertions.headers.include.etag: bad regular expression",
                     "assertions.body.mode: 'fuzzy': one of json-subset, exact, string, ignore expected",
                     "assertions.body.ignore: '$..[': not a JSONPath",
                     'assertions.body.custom: hook "noSuchHook" is defined by no --hooks file',
                     "policy externalHttp: one of strict, allow"):
        assert expected in errors, expected
    assert "'$.fine'" not in errors
    assert errors.count("findInCase") == 1  # the bad case's own problems, each once
    assert errors.count("'methd'") == 1  # the defaults' problem once, not once per case


def test_softprobes_example_validates_with_its_hooks_and_not_without_as_documented() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTPROBE_")}
    if "SOFTPROBE_CACHE_DIR" in os.environ:  # where the tsx loader is kept between runs
        env["SOFTPROBE_CACHE_DIR"] = os.environ["SOFTPROBE_CACHE_DIR"]
    env["PATH"] = f"{BIN}:{env['PATH']}"
    done = subprocess.run(["bash", "-eu", "-c", doc_block("sh", "suite validate")], cwd=EXAMPLE, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == doc_block("text", "valid (suite fragment-hooks-cli")


def test_suite_diff_lists_the_outbound_calls_added_and_removed(tmp_path: Path) -> None:
    (tmp_path / "baseline").mkdir()
    (tmp_path / "current").mkdir()
    shutil.copy(FRAGMENT_CASE, tmp_path / "baseline" / "a.case.json")
    shutil.copy(FRAGMENT_CASE, tmp_path / "current" / "a.case.json")
    moved = FRAGMENT_CASE.read_text().replace('"/fragment"', '"/shipping?zone=eu"')
    assert moved != FRAGMENT_CASE.read_text()
    (tmp_path / "current" / "b.case.json").write_text(moved)
    (tmp_path / "baseline" / "c.case.json").write_text(moved.replace("/shipping", "/legacy"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTPROBE_")}

    def diff(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "softprobe"), "suite", "diff", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30)

    done = diff("--baseline", "baseline/*.case.json", "--current", "current/a.case.json", "current/b.case.json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "baseline: 2 case files, 2 outbound signatures; current: 2 case files, 2",
        "+ GET softprobe-proxy:8084 /shipping  (1 call)",
        "- GET softprobe-proxy:8084 /legacy  (1 call)",
        "result: added=1 removed=1 kept=1"]
    same = json.loads(diff("--baseline", "baseline/a.case.json", "--current", "current/a.case.json", "--json").stdout)
    assert (same["status"], same["added"], same["removed"], same["kept"], same["drift"]) == ("ok", [], [], 1, False)
    missing = diff("--baseline", "nowhere/*.case.json", "--current", "current/a.case.json")
    assert missing.returncode != 0 and "nowhere/*.case.json: no such file" in missing.stderr
