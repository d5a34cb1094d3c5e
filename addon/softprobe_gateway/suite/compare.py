"""A case's assertions over the app's answer (`assertions` of suite-yaml.md): the status (an int,
a list, `{min, max}`), `headers.include` (regular expressions searched; a missing header fails),
the body by `mode` (`json-subset`, the default: the recorded body is contained in the answer;
`exact`; `string`, byte for byte; `ignore`), with `body.ignore` JSONPaths left out of both sides and
`body.redactions` applied to both first (so the diff and the reports never show the value).

Pure: an answer and a recorded response in, diff entries out; custom hooks are the runner's.
JSONPath is jsonpath-ng's (a maintained implementation: `$.a.b`, `[0]`, `[*]`, `..`, filters),
parsed once per expression.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonpath_ng.ext import parse as _parse_path

from softprobe_gateway.suite.results import DiffEntry, HttpMessage

MODES = ("json-subset", "exact", "string", "ignore")
MAX_DIFFS = 50  # per case: enough to read, bounded for a suite of thousands
_MISSING = object()
_parse_lock = threading.Lock()


class AssertionSpecError(ValueError):
    """An assertion the suite wrote that cannot be evaluated (a bad regex, JSONPath or mode)."""


@dataclass(frozen=True)
class Outcome:
    diffs: list[DiffEntry]
    body: str  # the answer's body with the redactions applied: what results and reports keep


def compare(assertions: Mapping[str, Any] | None, actual: HttpMessage,
            expected: HttpMessage | None) -> Outcome:
    """Every built-in assertion over `actual`; `expected` is the case's recorded response (None
    when the case recorded no ingress: then only what the suite states itself is checked)."""
    assertions = assertions or {}
    diffs = status_diffs(assertions.get("status"), actual.status or 0, expected)
    diffs += header_diffs(assertions.get("headers") or {}, actual.headers)
    body_spec = assertions.get("body") or {}
    if not isinstance(body_spec, Mapping):
        raise AssertionSpecError("assertions.body: a mapping expected")
    redactions = body_spec.get("redactions") or []
    shown = redact_text(actual.body, redactions)
    if expected is not None:
        diffs += body_diffs(body_spec, shown, redact_text(expected.body, redactions))
    return Outcome(diffs[:MAX_DIFFS], shown)


def status_diffs(spec: Any, actual: int, expected: HttpMessage | None) -> list[DiffEntry]:
    if spec is None:  # unstated: the recorded status, else any 2xx
        if expected is not None and expected.status:
            spec = expected.status
        elif 200 <= actual < 300:
            return []
        else:
            return [DiffEntry("status", "", "2xx", actual, "not a 2xx")]
    if isinstance(spec, bool):
        raise AssertionSpecError("assertions.status: an integer, a list or {min, max} expected")
    if isinstance(spec, int):
        return [] if actual == spec else [DiffEntry("status", "", spec, actual, "differs")]
    if isinstance(spec, list) and all(isinstance(s, int) for s in spec):
        return [] if actual in spec else [DiffEntry("status", "", spec, actual, f"not one of {spec}")]
    if isinstance(spec, Mapping) and set(spec) <= {"min", "max"} and spec:
        low, high = spec.get("min"), spec.get("max")
        if (low is None or actual >= low) and (high is None or actual <= high):
            return []
        return [DiffEntry("status", "", dict(spec), actual, f"outside {low if low is not None else ''}..{high if high is not None else ''}")]
    raise AssertionSpecError(f"assertions.status: {spec!r}: an integer, a list or {{min, max}} expected")


def header_diffs(spec: Mapping[str, Any], actual: Mapping[str, str]) -> list[DiffEntry]:
    if not isinstance(spec, Mapping):
        raise AssertionSpecError("assertions.headers: a mapping expected")
    ignored = {str(h).lower() for h in spec.get("ignore") or []}
    got = {k.lower(): v for k, v in actual.items()}
    diffs = []
    for name, pattern in (spec.get("include") or {}).items():
        name = str(name).lower()
        if name in ignored:
            continue
        try:
            wanted = re.compile(str(pattern))
        except re.error as e:
            raise AssertionSpecError(f"assertions.headers.include.{name}: bad regular expression: {e}") from None
        if name not in got:
            diffs.append(DiffEntry("header", name, str(pattern), None, "missing"))
        elif not wanted.search(got[name]):
            diffs.append(DiffEntry("header", name, str(pattern), got[name], "does not match"))
    return diffs


def without_ignored(headers: Mapping[str, str], spec: Mapping[str, Any] | None) -> dict[str, str]:
    """The headers a custom headers hook sees: `headers.ignore` stripped."""
    ignored = {str(h).lower() for h in ((spec or {}).get("ignore") or [])}
    return {k: v for k, v in headers.items() if k.lower() not in ignored}


def body_diffs(spec: Mapping[str, Any], actual: str, expected: str) -> list[DiffEntry]:
    mode = spec.get("mode") or "json-subset"
    if mode not in MODES:
        raise AssertionSpecError(f"assertions.body.mode: {mode!r}: one of {', '.join(MODES)} expected")
    if mode == "ignore":
        return []
    if mode == "string":
        return [] if actual == expected else [DiffEntry("body", "$", expected, actual, "differs (string)")]
    want, got = loads(expected), loads(actual)
    if want is _MISSING:  # a recorded body that is not JSON: compared as text
        return [] if actual == expected else [DiffEntry("body", "$", expected, actual, "differs (not JSON)")]
    if got is _MISSING:
        return [DiffEntry("body", "$", want, actual, "not JSON")]
    for path in spec.get("ignore") or []:
        want, got = drop(want, path), drop(got, path)
    diffs: list[DiffEntry] = []
    _walk(want, got, "$", mode == "exact", diffs)
    return diffs


def paths_invalid(paths: list[Any]) -> list[str]:
    """The entries of a JSONPath list that do not parse (for `suite validate`)."""
    bad = []
    for path in paths:
        try:
            _compiled(str(path))
        except AssertionSpecError as e:
            bad.append(str(e))
    return bad


def drop(document: Any, path: str) -> Any:
    """`document` without what `path` selects (a copy)."""
    return _compiled(path).filter(lambda _: True, copy.deepcopy(document))


def redact_text(body: str, redactions: list[Any]) -> str:
    """`body` with each redaction's `path` replaced by its `replacement` (JSON bodies only)."""
    if not redactions or not body:
        return body
    document = loads(body)
    if document is _MISSING:
        return body
    for index, rule in enumerate(redactions):
        if not isinstance(rule, Mapping) or not isinstance(rule.get("path"), str):
            raise AssertionSpecError(f"assertions.body.redactions[{index}]: {{path, replacement}} expected")
        document = _compiled(rule["path"]).update(document, rule.get("replacement", "***"))
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def parsed(body: str) -> Any:
    """The body as a hook receives it: parsed JSON, else the text itself."""
    value = loads(body)
    return body if value is _MISSING else value


def loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _MISSING


@lru_cache(maxsize=1024)
def _compiled(path: str) -> Any:
    with _parse_lock:  # the parser's tables are shared
        try:
            return _parse_path(path)
        except Exception as e:  # JSONPathError, and plain Exceptions from its lexer
            raise AssertionSpecError(f"{path!r}: not a JSONPath: {e}") from None


def _walk(want: Any, got: Any, where: str, exact: bool, diffs: list[DiffEntry]) -> None:
    if len(diffs) >= MAX_DIFFS:
        return
    if isinstance(want, dict) and isinstance(got, dict):
        for key, value in want.items():
            step = f"{where}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)) else f"{where}[{json.dumps(key)}]"
            if key not in got:
                diffs.append(DiffEntry("body", step, value, None, "missing"))
            else:
                _walk(value, got[key], step, exact, diffs)
        if exact:
            diffs += [DiffEntry("body", f"{where}.{key}", None, got[key], "unexpected") for key in got if key not in want]
    elif isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            diffs.append(DiffEntry("body", where, want, got, f"{len(got)} items, {len(want)} expected"))
            return
        for index, (w, g) in enumerate(zip(want, got)):
            _walk(w, g, f"{where}[{index}]", exact, diffs)
    elif not _same(want, got):
        diffs.append(DiffEntry("body", where, want, got, "differs"))


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 == 1.0, but true is not 1 and "1" is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b
