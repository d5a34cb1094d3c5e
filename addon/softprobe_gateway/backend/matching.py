"""When a recorded request answers a lookup, and why it does not: pure functions over plain data.

A request is reduced to a canonical form (method, host, route, sorted query, canonical body with
ignored fields removed) whose hash, the fingerprint, is stored with each exchange and indexed, so
a lookup is one indexed query. JSON bodies are compared structurally; form bodies like queries.
The same parsed form gives a field-level diff against the closest recording on a miss.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

MAX_DIFF_LINES = 8  # lines of a miss's diff that are kept
_MISSING = object()


@dataclass(frozen=True)
class Ignore:
    """Fields left out of matching: a plain name anywhere (JSON key, query or form parameter),
    a dotted path from the JSON body's root (list items are transparent: `items.id`)."""

    names: frozenset[str] = frozenset()
    paths: frozenset[tuple[str, ...]] = frozenset()

    @classmethod
    def parse(cls, fields: Iterable[str]) -> Ignore:
        fields = tuple(fields)
        return cls(frozenset(f for f in fields if "." not in f),
                   frozenset(tuple(f.split(".")) for f in fields if "." in f))

    def drops(self, path: tuple[str, ...]) -> bool:
        return path[-1] in self.names or path in self.paths

    @property
    def signature(self) -> str:
        """Changes whenever stored fingerprints would: the store recomputes them then."""
        return json.dumps([sorted(self.names), sorted(".".join(p) for p in self.paths)])


@dataclass(frozen=True)
class RequestForm:
    """A request parsed for matching. `body` is a JSON value, a form, or the text as recorded."""

    method: str
    host: str
    route: str
    query: tuple[tuple[str, str], ...]  # sorted, ignored names removed
    body_kind: str  # "json", "form", "text" (text covers base64 and unparsable bodies)
    body: Any

    def fingerprint(self) -> str:
        canonical = json.dumps([self.method, self.host, self.route, self.query, self.body_kind,
                                self.body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def without_body(self) -> RequestForm:
        """The same request line without a body: the form of a recording that kept none."""
        return dataclasses.replace(self, body_kind="text", body="")


def parse_request(method: str, host: str, path: str, content_type: str, body: str,
                  ignore: Ignore) -> RequestForm:
    route, _, query = path.partition("?")
    body_kind, value = _body(content_type, body, ignore)
    return RequestForm(method=method.upper(), host=host.lower(), route=route,
                       query=_pairs(query, ignore), body_kind=body_kind, body=value)


def _pairs(text: str, ignore: Ignore) -> tuple[tuple[str, str], ...]:
    pairs = parse_qsl(text, keep_blank_values=True)
    return tuple(sorted((k, v) for k, v in pairs if not ignore.drops((k,))))


def _body(content_type: str, body: str, ignore: Ignore) -> tuple[str, Any]:
    ct = content_type.lower()
    if not body:
        return "text", ""
    if "json" in ct or (not ct and body.lstrip()[:1] in ("{", "[")):
        try:
            return "json", strip_ignored(json.loads(body), ignore)
        except ValueError:
            pass
    if ct.startswith("application/x-www-form-urlencoded"):
        return "form", _pairs(body, ignore)
    return "text", body


def strip_ignored(value: Any, ignore: Ignore, path: tuple[str, ...] = ()) -> Any:
    """A JSON value without the fields `ignore` drops."""
    if isinstance(value, dict):
        return {k: strip_ignored(v, ignore, path + (k,)) for k, v in value.items()
                if not ignore.drops(path + (k,))}
    if isinstance(value, list):
        return [strip_ignored(v, ignore, path) for v in value]
    return value


# -- miss diagnostics -----------------------------------------------------------------------


def diff(recorded: RequestForm, got: RequestForm) -> list[str]:
    """Every field on which a recorded request and a lookup differ, as `field: recorded X, got Y`."""
    lines = [f"{name}: recorded {_show(a)}, got {_show(b)}"
             for name, a, b in (("method", recorded.method, got.method),
                                ("host", recorded.host, got.host),
                                ("path", recorded.route, got.route)) if a != b]
    lines += _diff_pairs("query", recorded.query, got.query)
    if recorded.body_kind == got.body_kind == "json":
        lines += diff_json("body", recorded.body, got.body)
    elif recorded.body_kind == got.body_kind == "form":
        lines += _diff_pairs("body", recorded.body, got.body)
    elif (recorded.body_kind, recorded.body) != (got.body_kind, got.body):
        lines.append(f"body: recorded {_show_body(recorded)}, got {_show_body(got)}")
    return lines


def summarize(lines: list[str]) -> tuple[str, ...]:
    """The first lines of a diff, and how many more there were."""
    if len(lines) <= MAX_DIFF_LINES:
        return tuple(lines)
    return (*lines[:MAX_DIFF_LINES - 1], f"... and {len(lines) - MAX_DIFF_LINES + 1} more differences")


def _diff_pairs(prefix: str, recorded: Iterable[tuple[str, str]],
                got: Iterable[tuple[str, str]]) -> list[str]:
    a, b = _multi(recorded), _multi(got)
    lines = []
    for name in sorted(a.keys() | b.keys()):
        va, vb = a.get(name, _MISSING), b.get(name, _MISSING)
        if va != vb:
            lines.append(f"{prefix}.{name}: {_side('recorded', va)}, {_side('got', vb)}")
    return lines


def _multi(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    values: dict[str, list[str]] = {}
    for k, v in pairs:
        values.setdefault(k, []).append(v)
    return {k: v[0] if len(v) == 1 else v for k, v in values.items()}


def diff_json(path: str, a: Any, b: Any) -> list[str]:
    """Every leaf where two JSON values differ, as `path: recorded X, got Y` (or `missing`)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [line for k in sorted(a.keys() | b.keys())
                for line in diff_json(f"{path}.{k}", a.get(k, _MISSING), b.get(k, _MISSING))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in diff_json(f"{path}[{i}]", x, y)]
    if a == b and type(a) is type(b):
        return []
    return [f"{path}: {_side('recorded', a)}, {_side('got', b)}"]


def _side(label: str, value: Any) -> str:
    if value is _MISSING:
        return "not recorded" if label == "recorded" else "missing"
    return f"{label} {_show(value)}"


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show_body(form: RequestForm) -> str:
    if form.body_kind == "text" and not form.body:
        return "no body"
    text = form.body if form.body_kind == "text" else json.dumps(form.body, ensure_ascii=False)
    return f"{_show(text, 40)} ({form.body_kind}, {len(text)} chars)"
