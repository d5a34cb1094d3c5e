"""Recording decisions (protocol section 5): what is recorded, and why not when it is not.

Regexes are compiled once per config; the decisions are pure functions of plain strings and a
header lookup, so they are tested without a proxy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from softprobe_gateway.config.schema import CollectionRules, ExemptionRule

STATIC_SUFFIXES = (".js", ".css", ".html", ".htm", ".svg", ".png", ".jpg", ".jpeg", ".gif",
                   ".webp", ".ico", ".ttf", ".woff", ".woff2", ".map")
STATIC_CONTENT_TYPES = ("application/javascript", "text/javascript", "application/x-javascript",
                        "text/css", "image/", "font/", "application/font", "application/x-font",
                        "text/html")
NEXT_HEADERS = ("rsc", "next-router-prefetch", "next-router-state-tree")

# Reasons a request is not recorded (metric labels), and what each means (logged once per reason).
EXEMPT, FRAMEWORK, STATIC, NOT_COLLECTED = "exempt", "framework", "static", "not_collected"
REASONS = {
    EXEMPT: "it matches an exemption rule (exemptionRules; by default the OTLP paths)",
    FRAMEWORK: "it is a Next.js internal request (RSC payload, data route or prefetch)",
    STATIC: "it is a static resource: a successful GET answered with a script, style, image, font "
            "or HTML page (by its path's suffix or the answer's content-type)",
    NOT_COLLECTED: "no collection rule (collectionRules) selects it",
    "sampled_out": "its session is not sampled (sampling.rate or sampling.rules, or its "
                   "traceparent's sampled flag with sampling.parent_based)",
    "over_budget": "the recording budget is spent (sampling.max_exchanges_per_s or max_bytes_per_s)",
}

HeaderGet = Callable[[str], "str | None"]


def _compile(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


def _any(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def _one(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """The patterns as one alternation, searched once per request (a pattern with flags of its
    own cannot join one: None, and they are searched one by one)."""
    try:
        return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
    except re.error:
        return None


@dataclass(frozen=True)
class _Exemption:
    hosts: tuple[re.Pattern[str], ...]
    paths: tuple[re.Pattern[str], ...]
    any_path: re.Pattern[str] | None = None  # `paths` as one pattern, when they join

    def matches(self, host: str, path: str) -> bool:
        if self.hosts and not _any(self.hosts, host):
            return False
        return self.any_path.search(path) is not None if self.any_path else _any(self.paths, path)


@dataclass(frozen=True)
class _ClientRule:
    host: re.Pattern[str]
    paths: tuple[re.Pattern[str], ...]


class RecordingRules:
    """Section 5, in order: exemptions, framework internals, static resources, collection rules."""

    def __init__(self, exemptions: tuple[ExemptionRule, ...], collection: CollectionRules) -> None:
        self._exemptions = tuple(
            _Exemption(_compile(r.hostPatterns), _compile(r.pathPatterns), _one(r.pathPatterns))
            for r in exemptions)
        self._server = _compile(tuple(r.path for r in collection.http.server))
        self._client = tuple(
            _ClientRule(re.compile(r.host), _compile(r.paths)) for r in collection.http.client)

    def skip_request(self, host: str, path: str, header: HeaderGet) -> str | None:
        """Why a request is not recorded (nor looked up), or None to record it. Whether it is a
        static resource depends on its answer too (`is_static`).

        `host` is the upstream host without port; `path` includes the query.
        """
        bare_path = path.split("?", 1)[0]
        for exemption in self._exemptions:
            if exemption.matches(host, bare_path):
                return EXEMPT
        if is_framework_internal(path, header):
            return FRAMEWORK
        if not self._collected(host, bare_path):
            return NOT_COLLECTED
        return None

    def _collected(self, host: str, path: str) -> bool:
        if not self._server and not self._client:
            return True
        if _any(self._server, path):
            return True
        return any(r.host.search(host) and (not r.paths or _any(r.paths, path))
                   for r in self._client)


def is_framework_internal(path: str, header: HeaderGet) -> bool:
    """Next.js internals: RSC payloads, data routes, prefetches."""
    if "_rsc=" in path or "/_next/data/" in path or path.startswith("/_next/"):
        return True
    if "text/x-component" in (header("accept") or ""):
        return True
    for name in NEXT_HEADERS:
        if header(name) is not None:
            return True
    for name in ("purpose", "sec-purpose"):
        if (value := header(name)) and value.strip().lower() == "prefetch":
            return True
    return False


def is_static(method: str, status: int, path: str, content_type: str | None, body_size: int) -> bool:
    """A static resource: a successful GET answered with a page or an asset, by the path's suffix
    or the answer's content-type. Never a redirect, an error page, an empty answer (a 204, which
    Flask labels `text/html`), a `1xx`/`3xx`/`4xx`/`5xx` or an answer to another method: those
    are what a test of the calling service needs replayed."""
    if method != "GET" or not 200 <= status < 300 or status == 204 or body_size == 0:
        return False
    if path.split("?", 1)[0].lower().endswith(STATIC_SUFFIXES):
        return True
    return bool(content_type) and content_type.strip().lower().startswith(STATIC_CONTENT_TYPES)
