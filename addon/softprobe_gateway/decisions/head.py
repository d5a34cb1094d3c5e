"""A request's head read once: every decision reads its fields from one mapping built in one
pass, not through mitmproxy's `Headers`, whose every lookup scans every field (about twenty
lookups a request: trace context, session, rules, streaming, the caller)."""

from __future__ import annotations

from collections.abc import Iterable


def header_map(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-cased names to values, a repeated field's values joined by `, ` as mitmproxy's
    `Headers` joins them (values decoded as it decodes them: UTF-8, surrogate escapes)."""
    head: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name = raw_name.lower().decode("utf-8", "surrogateescape")  # as mitmproxy: ASCII case only
        value = raw_value.decode("utf-8", "surrogateescape")
        head[name] = f"{head[name]}, {value}" if name in head else value
    return head
