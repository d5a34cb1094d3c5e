"""`softprobe suite init CASES... -o SUITE.yaml`: a starting suite written from case files, for a
first run over recorded traffic: each case sends its recorded ingress request again, each distinct
outbound call (`drift.signature`) is mocked from the case (`source: case`), and the answer must
contain the recorded one (`json-subset`).

A call every case makes exactly once is one mock of the defaults; a call only some cases make is a
mock of theirs (`overrides.mocks`, appended to the defaults). A call a case makes more than once
gets no mock (`findInCase` would find several spans): this project's runtime answers it from the
loaded case in recorded order, and a warning says so. A case with no recorded ingress request
cannot be sent and is left out, with a warning.

Pure: case files in, the suite document and the warnings out; the CLI writes the YAML.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprobe_gateway.store.model import Recording
from softprobe_gateway.suite.caseview import CaseFile
from softprobe_gateway.suite.drift import INBOUND, outbound, signature

_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Starter:
    document: dict[str, Any]
    warnings: list[str]
    cases: int
    mocks: int  # distinct mocks written (shared ones counted once)


def starter(name: str, cases: list[CaseFile], suite_dir: Path) -> Starter:
    """The suite for `cases`, its case paths relative to `suite_dir` (where the suite is written)."""
    warnings: list[str] = []
    usable: list[tuple[CaseFile, dict[str, Recording]]] = []
    for case in cases:
        inbound = [ex for ex in case.exchanges if ex.direction in INBOUND]
        if not inbound:
            warnings.append(f"{case.path}: no recorded inbound request to send: left out")
            continue
        if len(inbound) > 1:
            warnings.append(f"{case.path}: {len(inbound)} inbound requests recorded: the suite sends the first")
        counts = Counter(signature(ex) for ex in outbound(case.exchanges))
        for sig, n in sorted(counts.items()):
            if n > 1:
                warnings.append(f"{case.path}: {sig} called {n} times: no mock (the runtime answers it from "
                                "the loaded case, in recorded order)")
        once = {signature(ex): ex for ex in outbound(case.exchanges) if counts[signature(ex)] == 1}
        usable.append((case, once))
    shared = set.intersection(*(set(once) for _, once in usable)) if usable else set()
    names = _names(sorted({sig for _, once in usable for sig in once}))
    first = {sig: ex for _, once in reversed(usable) for sig, ex in once.items()}
    entries, case_names = [], Counter[str]()
    for case, once in usable:
        label = _unique(case.case_id or case.path.name.removesuffix(".json").removesuffix(".case"), case_names)
        entry: dict[str, Any] = {"path": os.path.relpath(case.path, suite_dir), "name": label}
        own = [mock(names[sig], ex) for sig, ex in sorted(once.items()) if sig not in shared]
        if own:
            entry["overrides"] = {"mocks": own}
        entries.append(entry)
    defaults: dict[str, Any] = {"request": {"source": "case.ingress"}}
    if shared:
        defaults["mocks"] = [mock(names[sig], first[sig]) for sig in sorted(shared)]
    defaults["assertions"] = {"body": {"mode": "json-subset"}}
    document = {"name": name, "version": 1, "cases": entries, "defaults": defaults}
    return Starter(document, warnings, len(entries), len(names))


def mock(name: str, ex: Recording) -> dict[str, Any]:
    """A `source: case` mock matching the recorded call by method, host and path."""
    match: dict[str, Any] = {}
    if ex.direction in ("outbound", "client"):
        match["direction"] = "outbound"
    match.update(method=(ex.method or "GET").upper(), host=ex.host, path=ex.path.split("?", 1)[0] or "/")
    return {"name": name, "match": match, "source": "case"}


def _names(signatures: list[str]) -> dict[str, str]:
    """A readable, distinct mock name per signature: `get-fragment`, else with the host."""
    taken: Counter[str] = Counter()
    named = {}
    for sig in signatures:
        method, host, path = sig.split(" ", 2)
        short = _SLUG.sub("-", f"{method} {path}".lower()).strip("-")
        named[sig] = short
        taken[short] += 1
    for sig in signatures:
        if taken[named[sig]] > 1:
            method, host, path = sig.split(" ", 2)
            named[sig] = _SLUG.sub("-", f"{method} {host} {path}".lower()).strip("-")
    used: Counter[str] = Counter()
    return {sig: _unique(name, used) for sig, name in named.items()}


def _unique(name: str, used: Counter[str]) -> str:
    used[name] += 1
    return name if used[name] == 1 else f"{name}-{used[name]}"
