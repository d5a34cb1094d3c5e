"""`suite run --detect-noise`: what an app answers differently to the same request under the same
mocks (timestamps, generated ids) is noise, not a regression. Each case is replayed once more
before its run, against the same version; the JSONPaths whose values differ between the two
answers are left out of the run's body comparison, and the case's notes say which.

Pure: two answers in, paths out; the runner does the replaying. Only the built-in body comparison
is filtered: a custom hook's issue stands (the suite asked for it by name), and so do the status
and the headers (an app whose status changes between two identical requests is worth a failure).
"""

from __future__ import annotations

from collections.abc import Sequence

from softprobe_gateway.suite import compare
from softprobe_gateway.suite.results import DiffEntry, HttpMessage

ROOT = "$"


def noisy_paths(first: HttpMessage, second: HttpMessage) -> list[str]:
    """The JSONPaths (in the comparison's own notation: `$.a.b`, `$.items[0]`, `$["odd key"]`)
    whose values differ between two answers' bodies: a value that changed, a key one has and the
    other lacks, a list whose length changed. Empty when the bodies agree, or when either is not
    JSON or their roots differ (then there is no part to leave out: see `apply`'s note)."""
    diffs = compare.body_diffs({"mode": "exact"}, second.body, first.body)
    return list(dict.fromkeys(d.where for d in diffs if d.where != ROOT))


def covers(path: str, where: str) -> bool:
    """Whether a difference at `where` lies at or under the noisy `path`."""
    return where == path or where.startswith((path + ".", path + "["))


def apply(diffs: Sequence[DiffEntry], probe: HttpMessage | None,
          answer: HttpMessage | None) -> tuple[list[DiffEntry], list[str]]:
    """The run's differences without the noisy ones, and the notes that say what was left out."""
    if probe is None or answer is None:
        return list(diffs), ["noise: not detected: the first replay failed before the app answered"]
    paths = noisy_paths(probe, answer)
    notes = []
    if paths:
        notes.append(f"noise: ignored {', '.join(paths)} (differed between two replays of the same version)")
    elif probe.body != answer.body:
        notes.append("noise: the body differed between two replays as a whole (not JSON, or another "
                     "kind of value): compared as usual")
    if probe.status != answer.status:
        notes.append(f"noise: status {probe.status} then {answer.status} in two replays: compared as usual")
    kept = [d for d in diffs if d.what != "body" or d.source or not any(covers(p, d.where) for p in paths)]
    return kept, notes
