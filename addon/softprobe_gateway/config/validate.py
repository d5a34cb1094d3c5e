"""Validation of YAML data against the schema, key by key, driven by the fields' metadata.

An error names the key and, briefly, the value, except a secret's: a field kept out of its
dataclass's repr (`public_key`, `redaction.salt`) is never echoed, nor the backend URL's
userinfo, query or path (a token hides there). These messages reach the log and the unauthenticated /metrics
(`softprobe_config_reload_error_info`), so they are made safe here, where they are built."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import reprlib
import types
import typing
from typing import Any, Literal
from urllib.parse import urlsplit

from softprobe_gateway.config.schema import PUBLIC_KEY_ENV, REMOVED_KEYS, ConfigError

HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
SIZE = re.compile(r"(\d+)([bkmgt]?)")
SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: str) -> int:
    """A size as mitmproxy spells them (`512k`, `1m`, `1048576`), for a YAML byte-size key and
    its mitmproxy option alike (config never imports mitmproxy, so its `human.parse_size` is not
    used): a ValueError saying what is expected."""
    match = SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"expected a size such as 64k or 1m, got {value!r}"[:120])
    return int(match[1]) * SIZE_UNITS[match[2]]


def closest(word: str, known: typing.Iterable[str]) -> str | None:
    """The known name a misspelled one most likely meant, if any is close."""
    matches = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def build(cls: type, data: Any, prefix: str) -> Any:
    """An instance of the schema class `cls` from `data`, or a ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = f"{prefix}{key}"
        f = fields.get(key) if isinstance(key, str) else None
        if f is None and name in REMOVED_KEYS:
            raise ConfigError(f"key '{name}': {REMOVED_KEYS[name]}")
        if f is None:
            meant = closest(key, fields) if isinstance(key, str) else None
            hint = f", did you mean '{meant}'?" if meant else ""
            raise ConfigError(f"key '{name}': unknown key{hint} (known here: {', '.join(sorted(fields))})")
        if f.metadata.get("size") and isinstance(raw, str):
            try:
                raw = parse_size(raw)
            except ValueError as e:
                raise ConfigError(f"key '{name}': {e}") from None
        try:
            value = _coerce(hints[f.name], raw, name)
        except ConfigError:
            if f.repr and f.metadata.get("check") != "backend_url":
                raise
            raise ConfigError(f"key '{name}': expected a string, got {type(raw).__name__} "
                              "(its value is not shown: it may hold a secret)") from None
        _check(f.metadata, value, name)
        values[f.name] = value
    return cls(**values)


def _coerce(tp: Any, raw: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, raw, f"{name}.")
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ConfigError(f"key '{name}': expected a list, got {_kind(raw)}")
        return tuple(_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(raw))
    if origin is dict:
        if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise ConfigError(f"key '{name}': expected a mapping of strings to strings")
        return dict(raw)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if raw is None and "" in allowed:
            return ""
        if raw not in allowed:
            shown = ", ".join(repr(a) for a in allowed if a)
            raise ConfigError(f"key '{name}': must be one of {shown}, got {raw!r}")
        return raw
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"unsupported schema type at {name}")
    if tp is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"key '{name}': expected true or false, got {_kind(raw)}")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"key '{name}': expected an integer, got {_kind(raw)}")
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(f"key '{name}': expected a number, got {_kind(raw)}")
        return float(raw)
    if tp is str:
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise ConfigError(f"key '{name}': expected a string, got {_kind(raw)}")
        return raw
    raise TypeError(f"unsupported schema type {tp!r} at {name}")


def _check(meta: typing.Mapping[str, Any], value: Any, name: str) -> None:
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"key '{name}': must be at least {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"key '{name}': must be at most {meta['max']}, got {value}")
    check = meta.get("check")
    if check == "regex":
        for i, pattern in enumerate(value if isinstance(value, tuple) else (value,)):
            try:
                re.compile(pattern)
            except re.error as e:
                where = f"{name}[{i}]" if isinstance(value, tuple) else name
                raise ConfigError(f"key '{where}': invalid regular expression {pattern!r}: {e}") from None
    elif check == "host":
        for i, host in enumerate(value):
            if not _is_host(host):
                raise ConfigError(f"key '{name}[{i}]': expected a host name, *.domain or an IP address, "
                                  f"got {host!r}")
    elif check == "backend_url" and value:
        _check_backend_url(value, name)
    elif check == "listen" and value:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"key '{name}': expected HOST:PORT, got {value!r}")


def _is_host(entry: str) -> bool:
    try:
        ipaddress.ip_address(entry)
        return True
    except ValueError:
        return bool(HOST_NAME.fullmatch(entry)) and ".." not in entry


NOT_HTTP = "is not an http or https URL"


def _check_backend_url(value: str, name: str) -> None:
    problem = http_url_problem(value, credentials_in=f"public_key or ${PUBLIC_KEY_ENV}")
    shown = shown_url(value)
    if problem == NOT_HTTP:
        parts = urlsplit(value)  # it parses: http_url_problem got as far as its scheme
        if parts.scheme not in ("file", "sqlite"):
            raise ConfigError(f"key '{name}': expected an http(s)://, sqlite: or file: URL, got {shown}")
        if not (parts.netloc + parts.path):
            raise ConfigError(f"key '{name}': URL {shown} names no file")
    elif problem:
        raise ConfigError(f"key '{name}': {shown} {problem}; expected http(s)://HOST[:PORT][/PREFIX]")


def http_url_problem(value: str, credentials_in: str) -> str:
    """What keeps `value` from being the http(s)://HOST[:PORT][/PATH] URL of a server, or "" when
    nothing does: one set of questions for the backend URL and the CLI's runtime URL. The answer
    never quotes the value (its userinfo or query may hold a secret: show it with shown_url);
    `credentials_in` is where the caller takes credentials from instead."""
    try:
        parts = urlsplit(value)
    except ValueError:  # an unbalanced `[` in the host
        return "is not a URL (a malformed host)"
    if "@" in parts.netloc:  # they would be logged, shown in /metrics, committed with the config
        return f"has credentials, which do not belong in it (use {credentials_in})"
    if parts.scheme not in ("http", "https"):
        return NOT_HTTP
    try:
        bad_port = parts.port == 0
    except ValueError:  # not a number, or above 65535
        bad_port = True
    return ("has a port that is not a number in 1-65535" if bad_port
            else "has no host" if not parts.hostname
            else "has a query or fragment" if parts.query or parts.fragment or value.endswith(("?", "#"))
            else "")


def shown_url(value: str) -> str:
    """A URL as an error may show it, quoted: the scheme and the host (and port) of a network
    URL, its path as `/...`, and `?...` for a query or fragment; userinfo never (a password or a
    token in any of them would reach the log and /metrics). A local path (`sqlite:`, `file:`) is
    shown; what is no URL at all (a key pasted in the wrong place?) only by its length."""
    try:
        parts = urlsplit(value)
    except ValueError:  # an unbalanced `[` in the host
        return f"a value of {len(value)} characters"
    rest = "?..." if parts.query or parts.fragment else ""
    if parts.scheme in ("file", "sqlite") and "@" not in parts.netloc:
        return repr(value.split("?", 1)[0].split("#", 1)[0] + rest)
    if not parts.netloc and parts.scheme in ("http", "https"):  # `http://`, `http:///x`, `http:x`
        lead = parts.scheme + ("://" if value[len(parts.scheme) + 1:].startswith("//") else ":")
        return repr(lead + ("..." if parts.path.strip("/") else "") + rest)
    if not parts.netloc:  # `user:token@host` parses as a scheme: its user part is no scheme to show
        return (f"{parts.scheme}:... (not a URL)" if parts.scheme and "@" not in value
                else f"a value of {len(value)} characters")
    host = parts.hostname or ""
    try:
        port = "" if parts.port is None else f":{parts.port}"
    except ValueError:
        port = ":..."
    path = "/..." if parts.path.strip("/") else parts.path
    return repr(f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{port}{path}{rest}")


def _kind(value: Any) -> str:
    """The offending value, briefly (reprlib: a YAML alias bomb must not be expanded to print it)."""
    return "nothing" if value is None else f"{type(value).__name__} {reprlib.repr(value)}"[:80]
