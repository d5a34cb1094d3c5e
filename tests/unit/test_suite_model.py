"""Suite files read as Softprobe's suite reference says: case globs and entries, the top-level
shortcut, per-case overrides, `${VAR}` expansion and its precedence, skip/only, --filter."""

from __future__ import annotations

from pathlib import Path

import pytest

from softprobe_gateway.suite import model


def write(directory: Path, text: str, name: str = "s.suite.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    for name in ("checkout/a.case.json", "checkout/b.case.json", "signup/c.case.json", "signup/deep/d.case.json"):
        (tmp_path / "cases" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cases" / name).write_text("{}")
    return tmp_path


def names(suite: model.Suite, filter: str = "") -> list[str]:
    return [str(c.path.relative_to(suite.path.parent)) + (f" [{c.name}]" if c.name else "") for c in suite.cases(filter)]


def test_cases_as_one_glob_a_list_of_globs_and_entries(cases: Path) -> None:
    one = model.load(write(cases, "name: s\ncases: cases/checkout/*.case.json\n"), shell={})
    assert names(one) == ["cases/checkout/a.case.json", "cases/checkout/b.case.json"]
    several = model.load(write(cases, "name: s\ncases: [cases/signup/**/*.case.json, cases/checkout/a.case.json]\n"),
                         shell={})
    assert names(several) == ["cases/signup/c.case.json", "cases/signup/deep/d.case.json", "cases/checkout/a.case.json"]
    entries = model.load(write(cases, "name: s\ncases:\n  - path: cases/checkout/a.case.json\n    name: happy\n"
                                      "  - {path: cases/checkout/a.case.json, name: declined}\n"), shell={})
    assert names(entries) == ["cases/checkout/a.case.json [happy]", "cases/checkout/a.case.json [declined]"]


def test_a_path_that_names_no_file_is_reported(cases: Path) -> None:
    suite = model.load(write(cases, "name: s\ncases: [cases/none/*.json, cases/missing.case.json]\n"), shell={})
    assert suite.unresolved() == ["cases[0]: 'cases/none/*.json' matches no file",
                                  f"cases[1]: {cases / 'cases/missing.case.json'}: no such case file"]


def test_the_top_level_shortcut_folds_into_defaults(cases: Path) -> None:
    suite = model.load(write(cases, "name: s\ncases: cases/checkout/a.case.json\nrequest: {path: /x}\n"
                                    "mocks: [{name: m, match: {path: /y}}]\nassertions: {status: 201}\n"
                                    "defaults: {assertions: {status: 200}}\n"), shell={})
    assert suite.defaults == {"assertions": {"status": 200}, "request": {"path": "/x"},
                              "mocks": [{"name": "m", "match": {"path": "/y"}}]}


def test_overrides_replace_request_assertions_policy_and_merge_mocks_by_name(cases: Path) -> None:
    suite = model.load(write(cases, """
name: s
defaults:
  request: {path: /a, headers: {x: "1"}}
  policy: {externalHttp: strict}
  assertions: {status: 200, body: {mode: exact}}
  mocks:
    - {name: stripe, match: {hostSuffix: stripe.com}, source: case}
    - {name: mail, match: {hostSuffix: sendgrid.net}, response: {status: 202}}
cases:
  - path: cases/checkout/a.case.json
    overrides:
      request: {path: /b}
      assertions: {status: 402}
      policy: {defaultOnMiss: error}
      mocks:
        - {name: stripe, response: {status: 402}}
        - {name: extra, match: {path: /z}, response: {status: 200}}
"""), shell={})
    plan = suite.cases()[0].plan
    assert plan["request"] == {"path": "/b"}  # whole, not merged with the default's headers
    assert plan["assertions"] == {"status": 402}
    assert plan["policy"] == {"defaultOnMiss": "error"}
    assert plan["mocks"] == [{"name": "stripe", "response": {"status": 402}},
                             {"name": "mail", "match": {"hostSuffix": "sendgrid.net"}, "response": {"status": 202}},
                             {"name": "extra", "match": {"path": "/z"}, "response": {"status": 200}}]
    assert suite.defaults["mocks"][0]["source"] == "case"  # the defaults themselves untouched


def test_env_precedence_shell_over_env_file_over_suite(cases: Path) -> None:
    env_file = cases / "test.env"
    env_file.write_text("# the CI's values\nexport FROM_FILE=file\nBOTH='file'\nALL=\"file\"\n")
    suite = model.load(write(cases, """
name: s
env: {FROM_SUITE: suite, BOTH: suite, ALL: suite}
cases: cases/checkout/a.case.json
request:
  headers:
    a: ${FROM_SUITE}
    b: ${FROM_FILE}
    c: ${BOTH}
    d: ${ALL}
    e: ${UNSET:-fallback}
    f: ${ALL:-unused}
    g: ${UNSET}
    h: "Bearer ${TOKEN}"
"""), env_file, shell={"ALL": "shell", "TOKEN": "t0k"})
    assert suite.defaults["request"]["headers"] == {"a": "suite", "b": "file", "c": "file", "d": "shell",
                                                    "e": "fallback", "f": "shell", "g": "${UNSET}", "h": "Bearer t0k"}
    assert suite.env["ALL"] == "shell" and suite.env["FROM_SUITE"] == "suite"


def test_a_variable_inside_a_flow_mapping_parses(cases: Path) -> None:
    """The reference's own example: `match: { hostSuffix: ${STRIPE_HOST:-stripe.com} }`."""
    suite = model.load(write(cases, "name: s\ncases: cases/checkout/a.case.json\n"
                                    "mocks:\n  - {name: stripe, match: { hostSuffix: ${STRIPE_HOST:-stripe.com} }}\n"),
                       shell={})
    assert suite.defaults["mocks"][0]["match"] == {"hostSuffix": "stripe.com"}


def test_only_skips_the_rest_and_skip_skips_its_entry(cases: Path) -> None:
    suite = model.load(write(cases, "name: s\ncases:\n  - {path: cases/checkout/a.case.json, name: one, only: true}\n"
                                    "  - {path: cases/checkout/b.case.json, name: two}\n"), shell={})
    assert [(c.name, c.skip) for c in suite.cases()] == [("one", False), ("two", True)]
    suite = model.load(write(cases, "name: s\ncases:\n  - {path: cases/checkout/a.case.json, name: one, skip: true}\n"
                                    "  - {path: cases/checkout/b.case.json, name: two}\n"), shell={})
    assert [(c.name, c.skip) for c in suite.cases()] == [("one", True), ("two", False)]


def test_filter_matches_the_path_or_the_name(cases: Path) -> None:
    suite = model.load(write(cases, "name: s\ncases:\n  - cases/checkout/*.case.json\n"
                                    "  - {path: cases/signup/c.case.json, name: card-declined}\n"), shell={})
    assert names(suite, "b.case") == ["cases/checkout/b.case.json"]
    assert names(suite, "card-declined") == ["cases/signup/c.case.json [card-declined]"]
    assert names(suite, "*/checkout/*") == ["cases/checkout/a.case.json", "cases/checkout/b.case.json"]
    assert names(suite, "nothing") == []


@pytest.mark.parametrize(("text", "message"), [
    ("cases: x.json\n", "name: required"),
    ("name: s\n", "cases: required"),
    ("name: s\ncases: [{name: no-path}]\n", "cases[0].path: required"),
    ("name: s\ncases: [{path: a, overides: {}}]\n", "cases[0].overides: unknown key"),
    ("name: s\ncases: a\ndefaults: {mocks: {name: x}}\n", "defaults.mocks: a list expected"),
    ("name: s\ncases: a\ndefaults: {requests: {}}\n", "defaults.requests: unknown key"),
    ("name: s\ncases: [{path: a, overrides: {mocks: [{match: [1]}]}}]\n", "cases[0].overrides.mocks[0].match: a mapping"),
    ("name: [unclosed\n", "not YAML"),
    ("name: s\nenv: [A]\ncases: a\n", "env: a mapping"),
])
def test_a_suite_that_cannot_run_says_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(model.SuiteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model.load(write(tmp_path, text), shell={}).cases()


def test_a_bad_env_file_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_text("GOOD=1\nno equals sign\n")
    with pytest.raises(model.SuiteError, match="line 2: KEY=VALUE expected"):
        model.load(write(tmp_path, "name: s\ncases: a\n"), tmp_path / "bad.env", shell={})
