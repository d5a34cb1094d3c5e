"""Hook files as `suite run` loads them: JavaScript and TypeScript in a real Node sidecar (the
newline-delimited JSON protocol, calls from many threads at once, console.log kept off the
protocol's stdout), Python in process; names qualified by file or bare; failures named."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from softprobe_gateway.suite.hooks import HookError, HookFileError, Hooks


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_javascript_typescript_and_python_hooks_by_name(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "stamp.mjs", "export const fresh = ({ capturedResponse, mockName }) => "
                                     "({ body: capturedResponse.body + '/' + mockName });\n"
                                     "export async function later({ request }) { return { path: request.path + '?v=2' }; }\n"),
        write(tmp_path, "shape.ts", "type Issue = { path: string };\n"
                                    "export function noIssues(_: unknown): Issue[] { console.log('noise'); return []; }\n"),
        write(tmp_path, "totals.py", "def check(actual, env, **_):\n    return [{'path': '$.total', 'actual': actual['total'], "
                                     "'reason': env['WHY']}]\n\ndef _private():\n    pass\n"),
    ]
    stderr = io.StringIO()
    with Hooks(files, stderr) as hooks:
        assert {"stamp.fresh", "fresh", "later", "shape.noIssues", "noIssues", "totals.check", "check"} <= hooks.names()
        assert "_private" not in hooks.names()
        assert hooks.call("stamp.fresh", "mock_response", {"capturedResponse": {"body": "b"}, "mockName": "m"}) == {"body": "b/m"}
        assert hooks.call("later", "request", {"request": {"path": "/x"}}) == {"path": "/x?v=2"}
        assert hooks.call("noIssues", "assert_body", {"actual": {}}) == []
        assert hooks.call("check", "assert_body", {"actual": {"total": 3}, "env": {"WHY": "w"}, "caseFile": "c"}) == \
            [{"path": "$.total", "actual": 3, "reason": "w"}]
    assert "sidecar: noise" in stderr.getvalue()


def test_calls_from_many_threads_each_get_their_own_answer(tmp_path: Path) -> None:
    hook = write(tmp_path, "echo.js", "exports.twice = async ({ n }) => { await new Promise(r => setTimeout(r, n % 7)); "
                                      "return { n: n * 2 }; };\n")
    with Hooks([hook]) as hooks, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda n: hooks.call("twice", "request", {"n": n})["n"], range(400)))
    assert answers == [n * 2 for n in range(400)]


def test_a_hook_that_throws_or_is_missing_or_ambiguous_is_named(tmp_path: Path) -> None:
    files = [write(tmp_path, "a.mjs", "export function boom() { throw new Error('no card in the body'); }\n"
                                      "export function same() { return 1; }\n"),
             write(tmp_path, "b.mjs", "export function same() { return 2; }\n"),
             write(tmp_path, "c.py", "def oops(**_):\n    return 1 / 0\n")]
    with Hooks(files) as hooks:
        with pytest.raises(HookError, match='hook "boom" failed: no card in the body'):
            hooks.call("boom", "request", {})
        with pytest.raises(HookError, match='hook "nope" not found in any --hooks file'):
            hooks.call("nope", "request", {})
        with pytest.raises(HookError, match='hook "same" is defined by more than one --hooks file: qualify it as FILE.same'):
            hooks.call("same", "request", {})
        assert (hooks.call("a.same", "request", {}), hooks.call("b.same", "request", {})) == (1, 2)
        with pytest.raises(HookError, match='hook "oops" failed: ZeroDivisionError: division by zero'):
            hooks.call("oops", "request", {})
        assert hooks.call("a.same", "request", {}) == 1  # the sidecar lives on after a failure


@pytest.mark.parametrize(("name", "text", "message"), [
    ("syntax.mjs", "export function (\n", "hook files did not load: .*SyntaxError"),
    ("broken.py", "def f(:\n", r"--hooks .*broken.py: SyntaxError"),
    ("hooks.rb", "", "a .py, .js, .mjs, .cjs or .ts file expected"),
])
def test_a_file_that_does_not_load_stops_the_run(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(HookFileError, match=message):
        Hooks([write(tmp_path, name, text)])
    with pytest.raises(HookFileError, match="no such file"):
        Hooks([tmp_path / "absent.ts"])
