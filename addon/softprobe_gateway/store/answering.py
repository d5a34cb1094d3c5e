"""Answering a lookup: an indexed query on the request's fingerprint (see `matching`), at the
replay position `positions` keeps in memory (which recorded session, the how-manyth of its
answers). Only recordings answer, never what the gateway answered itself."""

from __future__ import annotations


from softprobe_gateway.store import matching, schema
from softprobe_gateway.store.db import Db
from softprobe_gateway.store.model import Recording
from softprobe_gateway.store.positions import Replays
from softprobe_gateway.store.schema import RECORDED


def answer(db: Db, replays: Replays, session_id: str,
           form: matching.RequestForm) -> Recording | None:
    """The recorded exchange answering the next lookup of `form` in `session_id`, or None."""
    exchange = _next(db, replays, session_id, form.fingerprint())
    if exchange is None and form.body != "":
        # A recording without a request body (Softprobe's case profile does not require
        # one) answers its method, host, path and query whatever the body.
        exchange = _next(db, replays, session_id, form.without_body().fingerprint())
    return exchange


def _next(db: Db, replays: Replays, session_id: str, fingerprint: str) -> Recording | None:
    cue = replays.next(session_id, fingerprint, _Recordings(db))
    if cue is None:
        return None
    where = f"fingerprint = ? AND session_id = ? AND id <= ? AND {RECORDED}"
    args = (fingerprint, cue.session, cue.max_id)
    rows = db.execute(f"SELECT {schema.SELECT} FROM exchanges WHERE {where} "
                      "ORDER BY start_ns, id LIMIT 1 OFFSET ?", (*args, cue.position)).fetchall()
    if not rows:  # past the last recorded answer: repeat the last
        rows = db.execute(f"SELECT {schema.SELECT} FROM exchanges WHERE {where} "
                          "ORDER BY start_ns DESC, id DESC LIMIT 1", args).fetchall()
    return db.exchange(rows[0]) if rows else None


class _Recordings:
    """The replay state machine's questions (`positions.Recordings`), answered by one reader connection."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def has(self, fingerprint: str, session_id: str) -> bool:
        return self.db.execute(f"SELECT 1 FROM exchanges WHERE fingerprint = ? AND session_id = ? "
                               f"AND {RECORDED} LIMIT 1", (fingerprint, session_id)).fetchone() is not None

    def latest_session(self, fingerprint: str) -> str | None:
        row = self.db.execute(f"SELECT session_id FROM exchanges WHERE fingerprint = ? AND {RECORDED} "
                              "ORDER BY id DESC LIMIT 1", (fingerprint,)).fetchone()
        return row[0] if row else None

    def last_id(self) -> int:
        return self.db.execute("SELECT coalesce(max(id), 0) FROM exchanges").fetchone()[0]
