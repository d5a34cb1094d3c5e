"""A `*.suite.yaml` file read as Softprobe's suite reference says (`docs-site/reference/suite-yaml.md`):
`${VAR}` and `${VAR:-default}` expanded (the shell's environment over `--env-file` over the
suite's `env:`), the top-level `request`/`mocks`/`assertions` folded into `defaults`, `cases` as a
glob, a list of globs or entries (`path`, `name`, `overrides`, `skip`, `only`), and each case's
plan: the defaults with its overrides merged (`request`, `assertions`, `policy` replaced whole,
`mocks` merged by `name`).

Plain data out: the runner and `suite validate` read the same plans.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("request", "mocks", "assertions", "policy")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_GLOB = re.compile(r"[*?\[]")


class SuiteError(ValueError):
    """A suite file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class PlannedCase:
    """One case to run: its file, its entry's display name, and its merged plan (`request`,
    `mocks`, `assertions`, `policy`: plain dicts and lists as the YAML gave them)."""

    path: Path
    name: str
    plan: dict[str, Any]
    skip: bool = False

    def display_path(self, cwd: Path | None = None) -> str:
        """The path as Softprobe's output shows it: relative to the working directory."""
        return os.path.relpath(self.path, cwd or Path.cwd())


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    env: dict[str, str]  # what `${VAR}` saw and what hooks get as `env`
    defaults: dict[str, Any]
    entries: list[dict[str, Any]] = field(default_factory=list)  # `cases` as entries, globs unresolved

    def cases(self, filter: str = "") -> list[PlannedCase]:
        """The cases in suite order, globs resolved (sorted), `only` and `skip` applied: a skipped
        entry is kept, marked, so reports list it. `filter` keeps the cases whose path or name
        contains it (a glob pattern when it has glob characters)."""
        only = any(entry.get("only") for entry in self.entries)
        planned = []
        for index, entry in enumerate(self.entries):
            plan = merge(self.defaults, entry.get("overrides"), f"cases[{index}].overrides")
            skip = bool(entry.get("skip")) or (only and not entry.get("only"))
            for path in self._resolve(entry["path"]):
                case = PlannedCase(path, str(entry.get("name") or ""), plan, skip)
                if not filter or _selected(case, filter):
                    planned.append(case)
        return planned

    def _resolve(self, pattern: str) -> list[Path]:
        base = self.path.parent
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        if not _GLOB.search(pattern):
            return [Path(os.path.normpath(full))]
        found = sorted(glob.glob(full, recursive=True))
        return [Path(os.path.normpath(p)) for p in found]

    def unresolved(self) -> list[str]:
        """The `cases` entries that name no file (for `suite validate` and the run's start)."""
        problems = []
        for index, entry in enumerate(self.entries):
            paths = self._resolve(entry["path"])
            if not paths:
                problems.append(f"cases[{index}]: {entry['path']!r} matches no file")
            problems += [f"cases[{index}]: {p}: no such case file" for p in paths if not p.is_file()]
        return problems


def _selected(case: PlannedCase, filter: str) -> bool:
    texts = (str(case.path), case.display_path(), case.name)
    if _GLOB.search(filter):
        return any(fnmatch(t, filter) or fnmatch(t, f"*{filter}*") for t in texts)
    return any(filter in t for t in texts)


def load(path: str | Path, env_file: str | Path | None = None,
         shell: Mapping[str, str] | None = None) -> Suite:
    """Read and expand a suite file. Raises SuiteError naming the file and the key at fault."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SuiteError(f"{path}: {e.strerror or e}") from None
    outer = environment({}, read_env_file(env_file) if env_file else {}, os.environ if shell is None else shell)
    env = {**_suite_env(path, _VARIABLE.sub("", expand(text, outer))), **outer}
    document = _parse(path, expand(text, env))
    if not isinstance(document, dict):
        raise SuiteError(f"{path}: not a suite: a YAML mapping with `name` and `cases` expected")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise SuiteError(f"{path}: name: required (a string)")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SuiteError(f"{path}: defaults: a mapping expected")
    defaults = {**defaults}
    for section in SECTIONS:  # the top-level shortcut, folded in when `defaults` lacks it
        if section in document and section not in defaults:
            defaults[section] = document[section]
    check_plan(defaults, f"{path}: defaults")
    return Suite(name, path, env, defaults, _entries(path, document.get("cases")))


def environment(suite_env: Mapping[str, str], file_env: Mapping[str, str],
                shell: Mapping[str, str]) -> dict[str, str]:
    """Precedence as the reference says: shell env > --env-file > the suite's `env:`."""
    return {**suite_env, **file_env, **shell}


def expand(text: str, env: Mapping[str, str]) -> str:
    """`${VAR}` and `${VAR:-default}`; an unset variable without a default stays as written (so
    validation shows it rather than an empty string hiding it)."""
    def value(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        return default if default is not None else m.group(0)
    return _VARIABLE.sub(value, text)


def read_env_file(path: str | Path) -> dict[str, str]:
    """`KEY=VALUE` lines (`#` comments, blank lines, an optional `export `, quotes stripped)."""
    values = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise SuiteError(f"--env-file {path}: {e.strerror or e}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise SuiteError(f"--env-file {path}: line {number}: KEY=VALUE expected")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def merge(defaults: Mapping[str, Any], overrides: Any, where: str) -> dict[str, Any]:
    """A case's plan: `request`, `assertions` and `policy` of the overrides replace the
    defaults' whole; a mock of the overrides replaces the default mock of its `name` in place,
    the others are appended."""
    plan = {**defaults}
    if overrides is None:
        return plan
    if not isinstance(overrides, dict):
        raise SuiteError(f"{where}: a mapping expected")
    check_plan(overrides, where)
    for section in ("request", "assertions", "policy"):
        if section in overrides:
            plan[section] = overrides[section]
    if "mocks" in overrides:
        mocks = list(plan.get("mocks") or [])
        for mock in overrides["mocks"] or []:
            same = next((i for i, m in enumerate(mocks) if m.get("name") and m.get("name") == mock.get("name")), None)
            if same is None:
                mocks.append(mock)
            else:
                mocks[same] = mock
        plan["mocks"] = mocks
    return plan


def check_plan(plan: Mapping[str, Any], where: str) -> None:
    """The shapes the runner relies on; a wrong one is named here, before any case runs."""
    unknown = sorted(set(plan) - set(SECTIONS))
    if unknown:
        raise SuiteError(f"{where}.{unknown[0]}: unknown key (expected one of {', '.join(SECTIONS)})")
    for section, kind in (("request", dict), ("assertions", dict), ("policy", dict), ("mocks", list)):
        if plan.get(section) is not None and not isinstance(plan[section], kind):
            raise SuiteError(f"{where}.{section}: a {'list' if kind is list else 'mapping'} expected")
    for index, mock in enumerate(plan.get("mocks") or []):
        if not isinstance(mock, dict):
            raise SuiteError(f"{where}.mocks[{index}]: a mapping expected")
        if not isinstance(mock.get("match") or {}, dict):
            raise SuiteError(f"{where}.mocks[{index}].match: a mapping expected")


def _entries(path: Path, cases: Any) -> list[dict[str, Any]]:
    if isinstance(cases, str):
        cases = [cases]
    if not isinstance(cases, list) or not cases:
        raise SuiteError(f"{path}: cases: required (a glob, a list of globs, or entries with `path`)")
    entries = []
    for index, entry in enumerate(cases):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            raise SuiteError(f"{path}: cases[{index}].path: required (a string)")
        unknown = sorted(set(entry) - {"path", "name", "overrides", "skip", "only"})
        if unknown:
            raise SuiteError(f"{path}: cases[{index}].{unknown[0]}: unknown key")
        entries.append(entry)
    return entries


def _parse(path: Path, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not YAML: {str(e).splitlines()[0]}") from None


def _suite_env(path: Path, text: str) -> dict[str, str]:
    """The suite's own `env:` block, read from the file expanded without it (what is still unset
    there read as empty, so that YAML parses), before the expansion it feeds."""
    document = _parse(path, text)
    env = document.get("env") if isinstance(document, dict) else None
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise SuiteError(f"{path}: env: a mapping of names to values expected")
    return {str(k): "" if v is None else str(v) for k, v in env.items()}
