"""`suite diff --baseline A --current B`: two sets of captures compared for drift, as Softprobe's CLI
reference has it ("useful when regenerating cases"): the outbound calls the service makes, each as
its signature (`METHOD host path`, the query left out), that one set has and the other has not. A
signature that went away means a suite's `source: case` mock no longer finds its span; a new one,
a dependency a mock does not cover yet.

Pure over the exchanges the case files hold; reading them is `caseview`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from softprobe_gateway.store.model import Recording
from softprobe_gateway.suite.caseview import CaseFile

INBOUND = ("inbound", "server")


@dataclass(frozen=True)
class Drift:
    """The signatures only the current set has (`added`) and only the baseline has (`removed`),
    each with how many calls of it the set holds; `kept` counts the signatures both have."""

    added: dict[str, int]
    removed: dict[str, int]
    kept: int

    @property
    def none(self) -> bool:
        return not self.added and not self.removed


def signature(ex: Recording) -> str:
    return f"{(ex.method or 'GET').upper()} {ex.host} {ex.path.split('?', 1)[0] or '/'}"


def outbound(exchanges: Iterable[Recording]) -> list[Recording]:
    """The calls a service made: every recorded exchange but the requests it received."""
    return [ex for ex in exchanges if ex.direction not in INBOUND]


def signatures(cases: Iterable[CaseFile]) -> Counter[str]:
    """How many outbound calls of each signature a set of case files holds."""
    return Counter(signature(ex) for case in cases for ex in outbound(case.exchanges))


def drift(baseline: Counter[str], current: Counter[str]) -> Drift:
    added = {s: n for s, n in sorted(current.items()) if s not in baseline}
    removed = {s: n for s, n in sorted(baseline.items()) if s not in current}
    return Drift(added, removed, len(set(baseline) & set(current)))
