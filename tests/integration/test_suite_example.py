"""Softprobe's worked suite example (`e2e/cli-suite-run/`: its suite, its two TypeScript hook files,
the fragment case, at the same relative paths) run by `softprobe suite run` against our app behind
an ingress gateway and an egress gateway (real mitmdump processes with the addon), with
`softprobe serve` as the runtime: the per-case session, the mock rule, the session carried from
the ingress hop to the egress hop in `tracestate`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.suite_app import FragmentStack, fragment_stack
from testkit.support import BIN

DATA = Path(__file__).resolve().parents[1] / "data" / "cli-suite-run"
EXAMPLE = DATA / "e2e" / "cli-suite-run"  # the example's own directory: its README runs from there
HOOKS = ["--hooks", "hooks/rewrite-dep.ts", "--hooks", "hooks/assert-hello.ts"]


@dataclass
class Stack:
    stack: FragmentStack

    def suite(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("SOFTPROBE_", "APP_URL"))}
        environment.update(SOFTPROBE_RUNTIME_URL=self.stack.runtime.url, INGRESS_URL=self.stack.ingress.proxy, **env)
        if "SOFTPROBE_CACHE_DIR" in os.environ:  # where the tsx loader is kept between runs
            environment["SOFTPROBE_CACHE_DIR"] = os.environ["SOFTPROBE_CACHE_DIR"]
        return subprocess.run([str(BIN / "softprobe"), "suite", "run", *args], cwd=EXAMPLE, env=environment,
                              capture_output=True, text=True, timeout=120)


@contextmanager
def stack(tmp: Path, message: str = "hello") -> Iterator[Stack]:
    with fragment_stack(tmp, message) as s:
        yield Stack(s)
        assert not s.upstream.received  # the mock answered every /fragment: the live "ok" never asked


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("suite-example")) as s:
        yield s


def test_both_cases_pass_as_in_softprobes_readme(running: Stack) -> None:
    done = running.suite(*HOOKS, "--parallel", "2", "suites/fragment.suite.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "suite: fragment-hooks-cli"
    assert lines[1].startswith("  OK   ../../spec/examples/cases/fragment-happy-path.case.json [happy-path] (")
    assert lines[2].startswith("  OK   ../../spec/examples/cases/fragment-happy-path.case.json [fragment-down] (")
    assert lines[3] == "result: passed=2 failed=0 total=2"


def test_the_hook_sees_the_environment(running: Stack) -> None:
    """rewriteDep writes $FRAGMENT_DEP_VALUE into the mock and helloShape expects it back."""
    done = running.suite(*HOOKS, "--json", "suites/fragment.suite.yaml", FRAGMENT_DEP_VALUE="from-env")
    report = json.loads(done.stdout)
    assert (done.returncode, report["status"], report["exitCode"], report["passed"]) == (0, "ok", 0, 2), done.stderr
    assert [c["caseId"] for c in report["cases"]] == ["happy-path", "fragment-down"]
    assert {c["status"] for c in report["cases"]} == {"passed"}


def test_without_the_mock_hook_the_hook_driven_case_fails(running: Stack) -> None:
    """Softprobe's README's negative proof: without rewrite-dep.ts, happy-path fails naming the hook
    and fragment-down still passes; exit 20."""
    done = running.suite("--hooks", "hooks/assert-hello.ts", "suites/fragment.suite.yaml")
    assert done.returncode == 20, done.stdout + done.stderr
    fail, ok = done.stdout.splitlines()[1:3]
    assert fail.startswith("  FAIL ../../spec/examples/cases/fragment-happy-path.case.json [happy-path]")
    assert fail.endswith('resolve mocks: mocks[0] "fragment": hook "rewriteDep" not found in any --hooks file')
    assert ok.startswith("  OK   ") and "[fragment-down]" in ok
    assert done.stdout.splitlines()[-1] == "result: passed=1 failed=1 total=2"


def test_filter_runs_one_case(running: Stack) -> None:
    done = running.suite("--filter", "fragment-down", "--hooks", "hooks/assert-hello.ts", "suites/fragment.suite.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "result: passed=1 failed=0 total=1"


def test_a_throwing_hook_fails_its_case_with_the_hooks_message(running: Stack, tmp_path: Path) -> None:
    broken = tmp_path / "rewrite-dep.ts"
    broken.write_text("export function rewriteDep(_: any): never { throw new Error('fragment body unreadable'); }\n")
    done = running.suite("--hooks", str(broken), "--hooks", "hooks/assert-hello.ts", "suites/fragment.suite.yaml")
    assert done.returncode == 20
    assert 'hook "rewriteDep" failed: fragment body unreadable' in done.stdout.splitlines()[1]
    assert "[fragment-down]" in done.stdout.splitlines()[2] and " OK " in done.stdout.splitlines()[2]


def test_a_broken_app_fails_both_cases_with_a_readable_diff(tmp_path: Path) -> None:
    with stack(tmp_path, message="bye") as broken:
        done = broken.suite(*HOOKS, "suites/fragment.suite.yaml")
    assert done.returncode == 20, done.stdout + done.stderr
    out = done.stdout
    assert 'FAIL ../../spec/examples/cases/fragment-happy-path.case.json [happy-path]' in out
    assert 'body $.message (helloShape): expected "hello", got "bye"' in out
    assert '       body $.message: expected "hello", got "bye"  (helloUnavailable)' in out
    assert out.splitlines()[-1] == "result: passed=0 failed=2 total=2"
