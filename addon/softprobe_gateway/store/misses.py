"""Misses: the lookups nothing answered, each with the closest recording and how it differs,
kept in the `misses` table (the newest MAX_MISSES).

A read-only store (the gateway's proxy) hands its misses to the writer (the export worker) to be
diagnosed; either way a diagnosed miss waits in `Pending` until a write transaction carries it,
so a lookup never waits behind an ingest batch.

The `closest` column holds the closest exchange's span id (what `softprobe show` takes), a space,
then its description; rows written before held `#ROW` (the store's row id) instead of the span id,
and are read back with the span id that row has (none when it was deleted since).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable

from softprobe_gateway.decisions.tracecontext import own_sessions
from softprobe_gateway.store import matching, schema
from softprobe_gateway.store.db import Db
from softprobe_gateway.store.forms import Forms
from softprobe_gateway.store.model import LookupRequest, Miss, Recording
from softprobe_gateway.store.schema import RECORDED

MAX_MISSES = 1000  # kept in the file, newest first
MAX_CANDIDATES = 20  # recorded requests compared with a miss


def diagnose(db: Db, req: LookupRequest, form: matching.RequestForm, forms: Forms,
             session_scope: str, at_ns: int = 0) -> Miss:
    """The closest recorded request (same method, host and path first; then same host; then
    anything recent) and how it differs from the lookup."""
    best: tuple[list[str], Recording] | None = None
    for where, args in (("method = ? AND host = ? AND route = ?", (form.method, req.host, form.route)),
                        ("host = ?", (req.host,)), ("1 = 1", ())):
        rows = db.execute(f"SELECT {schema.SELECT} FROM exchanges WHERE {where} AND {RECORDED} "
                          "ORDER BY id DESC LIMIT ?", (*args, MAX_CANDIDATES)).fetchall()
        for ex in map(db.exchange, rows):
            lines = matching.diff(forms.of_exchange(ex), form)
            if session_scope == "only" and ex.session_id not in own_sessions(req.session_id):
                lines.append(f"session: recorded {ex.session_id!r}, got {req.session_id!r} "
                             "(store.session_scope is 'only')")
            if best is None or len(lines) < len(best[0]):
                best = (lines, ex)
        if best is not None:
            break
    closest, closest_exchange, lines = "", "", ["nothing recorded to compare with"]
    if best is not None:
        lines, ex = best
        closest, closest_exchange = f"{ex.method} {ex.host}{ex.path} in session {ex.session_id}", ex.span_id
    return Miss(at_ns=at_ns or time.time_ns(), session_id=req.session_id, method=req.method,
                host=req.host, path=req.path, closest=closest, closest_exchange=closest_exchange,
                diff=matching.summarize(lines or ["no difference: matches a recording that "
                                                  "was deleted or recorded after replay began"]))


class Pending:
    """Diagnosed misses not written yet (the newest MAX_MISSES), safe to add to from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._misses: list[Miss] = []

    def add(self, misses: Iterable[Miss]) -> None:
        with self._lock:
            self._misses = [*self._misses, *misses][-MAX_MISSES:]

    def flush(self, db: Db) -> None:
        """Write them in the caller's write transaction, keeping the newest MAX_MISSES in the file."""
        with self._lock:
            pending, self._misses = self._misses, []
        if not pending:
            return
        db.executemany(
            "INSERT INTO misses (at_ns, session_id, method, host, path, closest, diff) VALUES (?,?,?,?,?,?,?)",
            [(m.at_ns, m.session_id, m.method, m.host, m.path, f"{m.closest_exchange} {m.closest}".strip(),
              json.dumps(m.diff)) for m in pending])
        db.execute("DELETE FROM misses WHERE id <= (SELECT id FROM misses ORDER BY id DESC "
                   "LIMIT 1 OFFSET ?)", (MAX_MISSES,))


def latest(db: Db, limit: int) -> list[Miss]:
    """The latest misses written, newest first."""
    rows = db.execute("SELECT at_ns, session_id, method, host, path, closest, diff FROM misses "
                      "ORDER BY id DESC LIMIT ?", (min(limit, MAX_MISSES),)).fetchall()
    return [Miss(*r[:5], **_closest(db, r[5]), diff=tuple(json.loads(r[6]))) for r in rows]


def _closest(db: Db, stored: str) -> dict[str, str]:
    """The fields `closest` and `closest_exchange` of a stored `closest` (see the module's docstring)."""
    head, _, description = stored.partition(" ")
    if head.startswith("#") and head[1:].isdigit():
        row = db.execute("SELECT span_id FROM exchanges WHERE id = ?", (int(head[1:]),)).fetchone()
        head = row[0] if row else ""
    return {"closest": description, "closest_exchange": head}
