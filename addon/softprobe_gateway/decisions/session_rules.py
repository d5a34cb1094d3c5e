"""A control-API session's rules and policy (Softprobe's `rule.schema.json`, its session policy),
decided over a plain request: which rule answers, and whether an unanswered request is a strict miss.

Pure functions, so the runtime's answer path and the unit tests share them. Precedence as
Softprobe's "Rules and policy" page says: the highest `priority`, then the layer (session rules
before the loaded case's embedded rules), then the later entry of its array.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("mock", "error", "passthrough", "capture_only", "replay")
# The layers in precedence order on a priority tie.
SESSION, CASE = "session", "case"
_DIRECTIONS = {"server": "inbound", "client": "outbound"}
_JSON_PATH_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\[['\"]([^'\"]+)['\"]\]")


@dataclass(frozen=True, slots=True)
class Request:
    """What a rule can test: the request of one lookup."""

    method: str
    host: str  # as the lookup names it, port kept
    path: str  # with query
    direction: str = ""
    service: str = ""
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)  # names lower-case
    body: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)  # the lookup span's attributes


@dataclass(frozen=True, slots=True)
class Decision:
    """The winning rule's action, with the answer of a `mock` or an `error`."""

    action: str
    rule_id: str = ""
    layer: str = ""
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    latency_ms: int = 0

    @property
    def answers(self) -> bool:
        """Whether the runtime answers the lookup itself (else the request goes upstream)."""
        return self.action in ("mock", "error")


def decide(request: Request, session_rules: Sequence[Mapping[str, Any]],
           case_rules: Sequence[Mapping[str, Any]] = ()) -> Decision | None:
    """The action of the rule that wins for `request`, or None when no rule matches."""
    best: tuple[int, int, int] | None = None
    winner: tuple[str, Mapping[str, Any]] | None = None
    for rank, (layer, rules) in enumerate(((CASE, case_rules), (SESSION, session_rules))):
        for index, rule in enumerate(rules):
            if not matches(rule.get("when") or {}, request):
                continue
            key = (_int(rule.get("priority")), rank, index)
            if best is None or key > best:
                best, winner = key, (layer, rule)
    return None if winner is None else _decision(*winner)


def strict_miss(request: Request, policy: Mapping[str, Any]) -> bool:
    """Whether the policy refuses a request nothing answered: a blocked host, or strict external
    HTTP (outbound, off `allowHosts`), or `defaultOnMiss: error`."""
    host = _hostname(request.host)
    if any(_host_is(host, h) for h in policy.get("blockHosts") or ()):
        return True
    if any(_host_is(host, h) for h in policy.get("allowHosts") or policy.get("externalAllowlist") or ()):
        return False
    if policy.get("defaultOnMiss") == "error":
        return True
    return policy.get("externalHttp") == "strict" and _direction(request.direction) != "inbound"


def matches(when: Mapping[str, Any], request: Request) -> bool:
    """Every predicate given holds (an absent one matches anything)."""
    host, path = _hostname(request.host), request.path.split("?", 1)[0]
    checks = {
        "direction": lambda v: _direction(request.direction) == v,
        "service": lambda v: request.service == v,
        "host": lambda v: v.lower() in (request.host.lower(), host),
        "hostSuffix": lambda v: any(host.endswith(s.lower()) for s in _strings(v)),
        "notHostSuffix": lambda v: not any(host.endswith(s.lower()) for s in _strings(v)),
        "method": lambda v: request.method.upper() == str(v).upper(),
        "path": lambda v: path == v,
        "pathPrefix": lambda v: path.startswith(v),
        "headers": lambda v: all(_has_values(request, name, _strings(want)) for name, want in v.items()),
        "headerMatch": lambda v: all(_header_matches(request, name, pattern) for name, pattern in v.items()),
        "bodyJsonPath": lambda v: _json_path(request.body, v) not in (None, "", [], {}),
        "bodyJsonPathEquals": lambda v: all(_json_path(request.body, p) == want for p, want in v.items()),
        "traceTags": lambda v: all(request.tags.get(k) == _tag(want) for k, want in v.items()),
        "traceTagEquals": lambda v: all(request.tags.get(k) == _tag(want) for k, want in v.items()),
    }
    try:
        return all(checks[key](value) for key, value in when.items() if key in checks)
    except (TypeError, AttributeError, re.error):  # a malformed predicate matches nothing
        return False


def _decision(layer: str, rule: Mapping[str, Any]) -> Decision:
    then = rule.get("then") or {}
    action, rule_id = then.get("action", ""), str(rule.get("id") or rule.get("name") or "")
    answer = then.get("response") if action == "mock" else then.get("error") if action == "error" else None
    if not isinstance(answer, Mapping):
        return Decision(action, rule_id, layer, latency_ms=_int(then.get("latencyMs")))
    status = _int(answer.get("status")) or (200 if action == "mock" else 500)
    headers = _pairs(answer.get("headers"))
    body = answer.get("body", "")
    if not isinstance(body, str):
        body = json.dumps(body)
        if not any(k == "content-type" for k, _ in headers):
            headers = (*headers, ("content-type", "application/json"))
    latency = _int(answer.get("latencyMs")) or _int(then.get("latencyMs"))
    return Decision(action, rule_id, layer, status, headers, body, latency)


def _pairs(headers: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(headers, Mapping):
        items = [(k, v) for k, vs in headers.items() for v in _strings(vs)]
    elif isinstance(headers, list):
        items = [tuple(pair) for pair in headers if isinstance(pair, list | tuple) and len(pair) == 2]
    else:
        items = []
    return tuple((str(k).lower(), str(v)) for k, v in items)


def _has_values(request: Request, name: str, wanted: Sequence[str]) -> bool:
    got = request.headers.get(name.lower(), ())
    return all(w in got for w in wanted)


def _header_matches(request: Request, name: str, pattern: str) -> bool:
    return any(re.search(pattern, value) for value in request.headers.get(name.lower(), ()))


def _json_path(body: str, path: str) -> Any:
    """The value at a simple JSONPath (`$.a.b[0]['c']`) in a JSON body; None when absent."""
    try:
        value: Any = json.loads(body)
    except ValueError:
        return None
    rest = path.strip().removeprefix("$")
    while rest:
        step = _JSON_PATH_STEP.match(rest)
        if step is None:
            return None
        key, index, quoted = step.groups()
        rest = rest[step.end():]
        try:
            value = value[int(index)] if index is not None else value[key or quoted]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _hostname(host: str) -> str:
    """The host without its port, lower-case (IPv6 brackets kept)."""
    host = host.lower()
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and not name.endswith(":") else host


def _host_is(host: str, pattern: str) -> bool:
    """An allow/block list entry: the host itself, or a suffix (`.internal`, `stripe.com`)."""
    pattern = pattern.lower()
    return host == pattern or host.endswith(pattern if pattern.startswith(".") else "." + pattern)


def _direction(value: str) -> str:
    return _DIRECTIONS.get(value, value)


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def _tag(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
