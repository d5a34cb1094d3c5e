"""Replay positions: which recorded answer serves the next lookup, kept in memory, without SQL
(the SQLite engine's; the PostgreSQL engine keeps the same state machine in its tables:
`postgres_positions`).

Each lookup session walks, per distinct request (its fingerprint), the answers one recorded
session holds for that request, in recorded order; the store repeats the last once they run out.
Which recorded session is chosen once per request, per `store.session_scope`: the lookup's own,
then the recorded session a replay run's id names (`<recorded>~<run>`, see `tracecontext`), then
the one this lookup session already fell back to, then the latest that has the request. So each
run of `softprobe replay` walks the recording from its first answer, however recently another ran.
Recordings made after a walk began (the replay's own exports among them) are not part of it.
The store answers the questions of `Recordings`; this module only keeps positions.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from softprobe_gateway.decisions.tracecontext import own_sessions

MAX_REPLAYS = 10_000  # lookup sessions whose replay position is kept
MAX_SEQUENCES = 10_000  # distinct requests per lookup session


class Recordings(Protocol):
    """What the state machine asks of the recorded exchanges (gateway answers are not among them)."""

    def has(self, fingerprint: str, session_id: str) -> bool:
        """Whether `session_id` recorded the request."""

    def latest_session(self, fingerprint: str) -> str | None:
        """The session of the request's most recent recording, None when never recorded."""

    def last_id(self) -> int:
        """The newest recording's id (ids grow with every recording)."""


@dataclass(frozen=True, slots=True)
class Cue:
    """The answer to serve: the `position`-th recording (from 0) of the request in `session`,
    among recordings up to id `max_id`."""

    session: str
    max_id: int
    position: int


@dataclass(slots=True)
class _Sequence:
    """Where one lookup session stands in the recorded answers to one request."""

    session: str
    max_id: int
    served: int = 0


@dataclass(slots=True)
class _Replay:
    """One lookup session's replay state."""

    last_seen: float
    bound_session: str = ""  # the recorded session it fell back to first, preferred from then on
    sequences: OrderedDict[str, _Sequence] = field(default_factory=OrderedDict)  # by fingerprint


class Replays:
    """Every lookup session's positions, bounded in number, safe to call from several threads."""

    def __init__(self, session_scope: str, reset_after_s: float, *, max_replays: int = MAX_REPLAYS,
                 max_sequences: int = MAX_SEQUENCES, clock: Callable[[], float] = time.monotonic) -> None:
        self.session_scope, self.reset_after_s = session_scope, reset_after_s
        self.max_replays, self.max_sequences, self.clock = max_replays, max_sequences, clock
        self._replays: OrderedDict[str, _Replay] = OrderedDict()
        self._lock = threading.Lock()

    def next(self, session_id: str, fingerprint: str, recordings: Recordings) -> Cue | None:
        """Advance `session_id`'s position for the request; None when nothing recorded it (in
        scope). `recordings` is consulted outside the lock: it may be slow (a query)."""
        with self._lock:
            replay = self._touch(session_id)
            sequence = replay.sequences.get(fingerprint)
        if sequence is None:
            own = own_sessions(session_id)
            sequence = self._start(recordings, own, replay.bound_session, fingerprint)
            if sequence is None:
                return None
            with self._lock:
                sequence = replay.sequences.setdefault(fingerprint, sequence)
                if sequence.session not in own and not replay.bound_session:
                    replay.bound_session = sequence.session
                if len(replay.sequences) > self.max_sequences:
                    replay.sequences.popitem(last=False)
        with self._lock:
            position = sequence.served
            sequence.served += 1
        return Cue(sequence.session, sequence.max_id, position)

    def _touch(self, session_id: str) -> _Replay:
        """The lookup session's state (the caller holds the lock), started over when idle too long."""
        now = self.clock()
        replay = self._replays.get(session_id)
        if replay is None or (self.reset_after_s and now - replay.last_seen > self.reset_after_s):
            replay = self._replays[session_id] = _Replay(last_seen=now)
            if len(self._replays) > self.max_replays:
                self._replays.popitem(last=False)
        replay.last_seen = now
        self._replays.move_to_end(session_id)
        return replay

    def _start(self, recordings: Recordings, own: tuple[str, ...], bound: str,
               fingerprint: str) -> _Sequence | None:
        recorded = recorded_session(recordings, self.session_scope, own, bound, fingerprint)
        return None if recorded is None else _Sequence(session=recorded, max_id=recordings.last_id())


def recorded_session(recordings: Recordings, scope: str, own: tuple[str, ...], bound: str,
                     fingerprint: str) -> str | None:
    """The recorded session to replay the request from, per `session_scope`; `own` are the lookup
    session and the recorded session it names, `bound` the one it fell back to first."""
    candidates = [*(own if scope != "any" else ()), *((bound,) if bound and scope != "only" else ())]
    recorded = next((s for s in candidates if recordings.has(fingerprint, s)), None)
    if recorded is None and scope != "only":
        recorded = recordings.latest_session(fingerprint)
    return recorded


class CasePositions:
    """How many answers each control session's loaded case gave per request, in memory (one
    process's: the SQLite engine's), safe to call from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: dict[tuple[str, int, str], int] = {}  # (session, revision, fingerprint) -> given
        self._revisions: dict[str, int] = {}  # session -> the revision counted at

    def next(self, session_id: str, revision: int, fingerprint: str) -> int:
        key = (session_id, revision, fingerprint)
        with self._lock:
            if self._revisions.setdefault(session_id, revision) != revision:  # a new one starts over
                self._forget(session_id)
                self._revisions[session_id] = revision
            n = self._served.get(key, 0)
            self._served[key] = n + 1
        return n

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._forget(session_id)
            self._revisions.pop(session_id, None)

    def _forget(self, session_id: str) -> None:
        """The caller holds `_lock`."""
        for key in [k for k in self._served if k[0] == session_id]:
            del self._served[key]
