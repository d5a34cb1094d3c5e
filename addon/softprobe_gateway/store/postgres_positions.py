"""Replay positions in PostgreSQL: the state machine of `positions.Replays`, kept in the tables
`replays` and `replay_positions` and advanced atomically there (`INSERT ... ON CONFLICT`,
`UPDATE ... RETURNING`), so the Nth identical request of a replay gets the Nth recorded answer
whichever replica (process) it reaches.

A lookup session's row says where it stands: its `epoch` (when it started, or started over after
`store.sequence_reset_s` idle) and the recorded session it fell back to first. A position row of
another epoch is stale: the next lookup starts that request over. The recorded session is chosen
as the in-memory machine chooses it (`positions.recorded_session`).
"""

from __future__ import annotations

import time

from softprobe_gateway.decisions.tracecontext import own_sessions
from softprobe_gateway.store.positions import Cue, Recordings, recorded_session

# Touch the lookup session: started now, or over when idle too long; its epoch and bound session.
_TOUCH = """INSERT INTO replays (id, epoch, bound_session, last_seen_ns) VALUES (%(id)s, %(now)s, '', %(now)s)
ON CONFLICT (id) DO UPDATE SET
  epoch = CASE WHEN %(reset)s > 0 AND %(now)s - replays.last_seen_ns > %(reset)s THEN %(now)s ELSE replays.epoch END,
  bound_session = CASE WHEN %(reset)s > 0 AND %(now)s - replays.last_seen_ns > %(reset)s THEN ''
                  ELSE replays.bound_session END,
  last_seen_ns = GREATEST(replays.last_seen_ns, %(now)s)
RETURNING epoch, bound_session"""
_ADVANCE = """UPDATE replay_positions SET served = served + 1
WHERE replay_id = %s AND fingerprint = %s AND epoch = %s RETURNING recorded_session, max_id, served - 1"""
# Start the request's walk; another replica that started it meanwhile wins, and this one advances.
_START = """INSERT INTO replay_positions (replay_id, fingerprint, epoch, recorded_session, max_id, served)
VALUES (%(id)s, %(fingerprint)s, %(epoch)s, %(session)s, %(max_id)s, 1)
ON CONFLICT (replay_id, fingerprint) DO UPDATE SET
  recorded_session = CASE WHEN replay_positions.epoch = excluded.epoch THEN replay_positions.recorded_session
                     ELSE excluded.recorded_session END,
  max_id = CASE WHEN replay_positions.epoch = excluded.epoch THEN replay_positions.max_id ELSE excluded.max_id END,
  served = CASE WHEN replay_positions.epoch = excluded.epoch THEN replay_positions.served + 1 ELSE 1 END,
  epoch = excluded.epoch
RETURNING recorded_session, max_id, served - 1"""
_BIND = "UPDATE replays SET bound_session = %s WHERE id = %s AND epoch = %s AND bound_session = ''"
CASE_NEXT = """INSERT INTO case_positions (session_id, revision, fingerprint, served) VALUES (%s, %s, %s, 1)
ON CONFLICT (session_id, revision, fingerprint) DO UPDATE SET served = case_positions.served + 1
RETURNING served - 1"""


class SharedReplays:
    """The replay positions on one autocommit connection: each statement commits by itself."""

    def __init__(self, conn, session_scope: str, reset_after_s: float) -> None:
        self.conn, self.session_scope = conn, session_scope
        self.reset_ns = int(reset_after_s * 1e9)

    def next(self, session_id: str, fingerprint: str, recordings: Recordings) -> Cue | None:
        """Advance `session_id`'s position for the request; None when nothing recorded it."""
        epoch, bound = self.conn.execute(_TOUCH, {"id": session_id, "now": time.time_ns(),
                                                  "reset": self.reset_ns}).fetchone()
        row = self.conn.execute(_ADVANCE, (session_id, fingerprint, epoch)).fetchone()
        if row is not None:
            return Cue(*row)
        own = own_sessions(session_id)
        recorded = recorded_session(recordings, self.session_scope, own, bound, fingerprint)
        if recorded is None:
            return None
        session, max_id, position = self.conn.execute(_START, {
            "id": session_id, "fingerprint": fingerprint, "epoch": epoch, "session": recorded,
            "max_id": recordings.last_id()}).fetchone()
        if session not in own and not bound:
            self.conn.execute(_BIND, (session, session_id, epoch))
        return Cue(session, max_id, position)
