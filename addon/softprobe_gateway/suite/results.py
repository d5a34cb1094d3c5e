"""What a suite run found, as plain data: the runner fills these in, the human output, `--json`,
the JUnit XML and the HTML report only read them (so a report never re-runs or re-derives a case).

Stable: reports depend on these names. New fields may be added; none renamed or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

CaseStatus = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class DiffEntry:
    """One difference between what the case expected and what the app answered.

    `what` is `status`, `header` or `body`; `where` says which: the header's name (lower case)
    for a header, a JSONPath (`$.items[0].price`) for a body, empty for the status. `reason` is
    a short sentence for people (`missing`, `differs`, `not in [200, 201]`, a hook's `reason`).
    `source` names a custom hook when one reported the entry, else empty.
    """

    what: Literal["status", "header", "body"]
    where: str
    expected: Any
    actual: Any
    reason: str = ""
    source: str = ""


@dataclass(frozen=True)
class HttpMessage:
    """A request or response as sent or received: headers lower-cased, one value each (joined by
    `, ` when repeated), the body as text (bytes that are not UTF-8 decoded with replacement)."""

    method: str = ""
    url: str = ""
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass(frozen=True)
class MockUsed:
    """A mock as the case registered it on the runtime: its suite name, the `match` predicates,
    where the answer came from (`case`, `inline`; `+hook NAME` when a hook rewrote it) and the
    response the rule answers with."""

    name: str
    match: dict[str, Any]
    source: str
    response: HttpMessage
    priority: int | None = None
    consume: str | None = None
    latency_ms: int | None = None


@dataclass(frozen=True)
class CaseResult:
    """One case of the suite: an entry of `cases` (after globs), run once.

    `case_id` is the entry's `name` when it has one, else the case file's `caseId`, else its
    path; `name` is the entry's `name` (the display name, empty when none); `path` the case
    file as the suite resolved it (relative to the working directory when it is under it).
    `failure` is one line saying why the case failed (the first diff, a hook's error, the
    runtime unreachable), empty when it passed. `expected` is the case's recorded ingress
    response (what the comparison ran against), when the case had one. The bodies of `request`,
    `response`, `expected` and the mocks' answers are kept for a failed case only (a passed
    case's are empty), so that a run of thousands of cases holds little; the values of secret
    headers (`authorization`, `cookie`, ...: the gateway's own list) are `***` in all of them.
    """

    case_id: str
    name: str
    path: str
    status: CaseStatus
    duration_ms: int
    failure: str = ""
    diffs: tuple[DiffEntry, ...] = ()
    mocks: tuple[MockUsed, ...] = ()
    request: HttpMessage | None = None
    response: HttpMessage | None = None
    expected: HttpMessage | None = None
    session_id: str = ""
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """`path [name]` as Softprobe's human output shows a case."""
        return f"{self.path} [{self.name}]" if self.name else self.path


@dataclass(frozen=True)
class SuiteResult:
    """The whole run: the suite's `name`, its file, the cases in suite order, the wall time."""

    name: str
    path: str
    cases: tuple[CaseResult, ...]
    duration_ms: int
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> int:
        return sum(1 for c in self.cases if c.status == "passed")

    @property
    def failed(self) -> int:
        return sum(1 for c in self.cases if c.status == "failed")

    @property
    def skipped(self) -> int:
        return sum(1 for c in self.cases if c.status == "skipped")

    @property
    def total(self) -> int:
        return len(self.cases)

    @property
    def ok(self) -> bool:
        return self.failed == 0
