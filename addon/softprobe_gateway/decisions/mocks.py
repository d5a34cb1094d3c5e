"""Static mocks from config: a fixed answer for matching requests, checked before any lookup."""

from __future__ import annotations

import re

from softprobe_gateway.config.schema import MockRule


class Mocks:
    """The configured mock rules, regexes compiled once; the first matching rule wins."""

    def __init__(self, rules: tuple[MockRule, ...]) -> None:
        self._rules = [(rule, rule.method.upper(), re.compile(rule.host), re.compile(rule.path))
                       for rule in rules]

    def match(self, method: str, host: str, path: str) -> MockRule | None:
        """The first rule whose method (empty: any) and host and path patterns (searched, empty:
        any) match, or None."""
        method = method.upper()
        for rule, rule_method, host_re, path_re in self._rules:
            if (not rule_method or rule_method == method) and host_re.search(host) and path_re.search(path):
                return rule
        return None
