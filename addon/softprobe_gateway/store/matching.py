"""When a recorded request answers a lookup, and why it does not: pure functions over plain data.

A request is reduced to a canonical form (method, host, route, sorted query, canonical body with
ignored fields removed) whose hash, the fingerprint, is stored with each exchange and indexed, so
a lookup is one indexed query. JSON bodies are compared structurally; form bodies like queries;
multipart/form-data bodies part by part, without the boundary every client draws at random.
The same parsed form gives a field-level diff against the closest recording on a miss.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

CANONICAL_VERSION = 2  # bumped whenever the canonical form changes, so stored fingerprints are redone
MAX_DIFF_LINES = 8  # lines of a miss's diff that are kept
MAX_PARTS = 2000  # a multipart body with more parts is compared as recorded
_MISSING = object()
# `; key=value` or `; key="quoted"` in a header; linear, unlike email's parser on hostile input
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^;]*))')


@dataclass(frozen=True)
class Ignore:
    """Fields left out of matching: a plain name anywhere (JSON key, query or form parameter,
    multipart part), a dotted path from the JSON body's root (list items are transparent:
    `items.id`; a JSON part's root is its name: `meta.ts`)."""

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
        return json.dumps([CANONICAL_VERSION, sorted(self.names), sorted(".".join(p) for p in self.paths)])


@dataclass(frozen=True)
class RequestForm:
    """A request parsed for matching. `body` is a JSON value, a form, multipart parts (see
    `_part`), or the text as recorded."""

    method: str
    host: str
    route: str
    query: tuple[tuple[str, str], ...]  # sorted, ignored names removed
    body_kind: str  # "json", "form", "multipart", "text" (text covers base64 and unparsable bodies)
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
    if ct.startswith("multipart/form-data"):
        parts = _multipart(content_type, body, ignore)
        return ("text", body) if parts is None else ("multipart", parts)
    if "json" in ct or (not ct and body.lstrip()[:1] in ("{", "[")):
        try:
            return "json", strip_ignored(json.loads(body), ignore)
        except (ValueError, RecursionError):  # hostile nesting is compared as recorded too
            pass
    if ct.startswith("application/x-www-form-urlencoded"):
        return "form", _pairs(body, ignore)
    return "text", body


def _multipart(content_type: str, body: str, ignore: Ignore) -> tuple[tuple[Any, ...], ...] | None:
    """The parts of a multipart/form-data body (RFC 7578, delimiters per RFC 2046; preamble and
    epilogue dropped), sorted by name, same-name parts in their order; None when the body is not
    one whole (no boundary, truncated, no closing delimiter, over MAX_PARTS parts)."""
    boundary = _params(content_type).get("boundary", "")
    if not boundary:
        return None
    pieces = (b"\r\n" + _raw(body)).split(b"\r\n--" + boundary.encode("utf-8", "surrogatepass"),
                                           MAX_PARTS + 1)
    parts: list[tuple[Any, ...]] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        padding, crlf, rest = piece.partition(b"\r\n")
        part = _part(rest, ignore) if crlf and not padding.strip(b" \t") else None
        if part is None:
            return None
        parts.append(part)
    else:
        return None
    return tuple(sorted((p for p in parts if not ignore.drops((p[0],))), key=lambda p: p[0]))


def _raw(body: str) -> bytes:
    """A body's bytes: spans carry a multipart body as base64, some sources as text."""
    try:
        return base64.b64decode(body, validate=True)
    except ValueError:
        return body.encode("utf-8", "surrogatepass")


def _part(part: bytes, ignore: Ignore) -> tuple[Any, ...] | None:
    """A part as (name, filename, content type, content kind, content), None if malformed.
    Filename and content type are None when absent: `filename=""` is an empty file input."""
    head, blank, content = (b"\r\n" + part).partition(b"\r\n\r\n")
    if not blank:
        return None
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.decode("utf-8", "surrogateescape").partition(":")
        if not colon:
            return None
        headers[name.strip().lower()] = value.strip()
    disposition = _params(headers.get("content-disposition", ""))
    name = disposition.get("name", "")
    filename = disposition.get("filename", disposition.get("filename*"))
    content_type = headers.get("content-type")
    return (name, filename, content_type, *_content(content, name, filename, content_type, ignore))


def _content(content: bytes, name: str, filename: str | None, content_type: str | None,
             ignore: Ignore) -> tuple[str, Any]:
    """A part's content: a JSON value, the text of a field, or else (files, binary) a digest and
    size, which keeps uploads out of the canonical form yet says whether and how they differ."""
    if content_type and "json" in content_type.lower():
        try:
            return "json", strip_ignored(json.loads(content), ignore, (name,))
        except (ValueError, RecursionError):
            pass
    if filename is None:
        try:
            return "text", content.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return "bytes", {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}


def _params(header: str) -> dict[str, str]:
    """A header's parameters, names lowercased, values as written (quotes removed, escapes kept)."""
    return {m[1].lower(): m[2] if m[2] is not None else m[3].strip() for m in _PARAM.finditer(header)}


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
    elif recorded.body_kind == got.body_kind == "multipart":
        lines += _diff_parts(recorded.body, got.body)
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


def _diff_parts(recorded: tuple[tuple[Any, ...], ...], got: tuple[tuple[Any, ...], ...]) -> list[str]:
    """Part by part, same-name parts by position: `body.part[name].filename: recorded X, got Y`."""
    a, b = _by_name(recorded), _by_name(got)
    lines = []
    for name in sorted(a.keys() | b.keys()):
        pa, pb = a.get(name, []), b.get(name, [])
        count = max(len(pa), len(pb))
        for i in range(count):
            label = f"body.part[{name}]" + (f"[{i}]" if count > 1 else "")
            lines += _diff_part(label, pa[i] if i < len(pa) else _MISSING, pb[i] if i < len(pb) else _MISSING)
    return lines


def _by_name(parts: tuple[tuple[Any, ...], ...]) -> dict[str, list[tuple[Any, ...]]]:
    named: dict[str, list[tuple[Any, ...]]] = {}
    for part in parts:
        named.setdefault(part[0], []).append(part)
    return named


def _diff_part(label: str, a: Any, b: Any) -> list[str]:
    if a is _MISSING or b is _MISSING:
        return [f"{label}: " + (f"not recorded, got {_show_part(b)}" if a is _MISSING
                                else f"recorded {_show_part(a)}, missing")]
    (_, file_a, type_a, kind_a, content_a), (_, file_b, type_b, kind_b, content_b) = a, b
    lines = [f"{label}.{field}: {_side('recorded', _absent(x))}, {_side('got', _absent(y))}"
             for field, x, y in (("filename", file_a, file_b), ("content-type", type_a, type_b)) if x != y]
    where = label if file_a is None and file_b is None else f"{label}.content"
    if kind_a == kind_b == "json":
        lines += diff_json(where, content_a, content_b)
    elif (kind_a, content_a) != (kind_b, content_b):
        lines.append(f"{where}: recorded {_show_content(kind_a, content_a)}, "
                     f"got {_show_content(kind_b, content_b)}")
    return lines


def _absent(value: Any) -> Any:
    return _MISSING if value is None else value


def _show_part(part: tuple[Any, ...]) -> str:
    _, filename, _, kind, content = part
    shown = _show_content(kind, content)
    return shown if filename is None else f"file {_show(filename)}, {shown}"


def _show_content(kind: str, content: Any) -> str:
    if kind == "bytes":
        return f"{content['size']} bytes (sha256 {content['sha256'][:12]})"
    return _show(content)


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
    if form.body_kind == "multipart":
        return f"multipart, {len(form.body)} parts"
    text = form.body if form.body_kind == "text" else json.dumps(form.body, ensure_ascii=False)
    return f"{_show(text, 40)} ({form.body_kind}, {len(text)} chars)"
