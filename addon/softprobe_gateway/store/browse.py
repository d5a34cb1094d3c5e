"""Browsing what was recorded, for the CLI and `softprobe serve`: sessions a page at a time,
one session, replay runs, what an id (or the start of one) names, one exchange.

A replay run's session (`<recorded>~<run>`, `tracecontext.RUN_SEPARATOR`) is told from a
recording by a `~` with something on both sides: `RUN` is that as a LIKE pattern, which both
engines take as it is.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable

from softprobe_gateway.answered_by import HIT, MOCK, REFUSAL
from softprobe_gateway.decisions.tracecontext import RUN_SEPARATOR
from softprobe_gateway.store import schema
from softprobe_gateway.store.db import Db
from softprobe_gateway.store.model import Recording, RunSummary, SessionPage, SessionSummary

MAX_PAGE = 100  # sessions per page of a listing
_SESSION = "SELECT id, service, first_ns, last_ns, exchanges, errors FROM sessions"
RUN = f"%_{RUN_SEPARATOR}_%"  # a replay run's session id, as a LIKE pattern
_RUN = f"""SELECT s.id, s.service, s.first_ns, s.last_ns, s.exchanges, s.errors,
    (SELECT COUNT(*) FROM exchanges e WHERE e.session_id = s.id AND e.answered_by IN (?, ?)),
    (SELECT COUNT(*) FROM exchanges e WHERE e.session_id = s.id AND e.answered_by = ?),
    (SELECT COUNT(*) FROM misses m WHERE m.session_id = s.id)
    FROM sessions s WHERE s.id LIKE ?"""


def sessions(db: Db, size: int, service: str, status: int, start_from_ns: int,
             start_to_ns: int, cursor: str, runs: bool | None = None) -> SessionPage:
    """Keyset pagination on (last_ns, id): a page holds however many sessions were added since.
    `runs` False lists recordings only, True replay runs only, None both."""
    clauses, args = ["1 = 1"], []
    if runs is not None:
        clauses.append("id LIKE ?" if runs else "id NOT LIKE ?")
        args.append(RUN)
    if service:
        clauses.append("(service = ? OR EXISTS (SELECT 1 FROM exchanges e "
                       "WHERE e.session_id = s.id AND e.service = ?))")
        args += [service, service]
    if status:
        clauses.append("EXISTS (SELECT 1 FROM exchanges e WHERE e.session_id = s.id AND e.status = ?)")
        args.append(status)
    if start_from_ns:
        clauses.append("first_ns >= ?")
        args.append(start_from_ns)
    if start_to_ns:
        clauses.append("first_ns <= ?")
        args.append(start_to_ns)
    if cursor:
        clauses.append("(last_ns, id) < (?, ?)")
        args += _decode_cursor(cursor)
    size = max(1, min(size, MAX_PAGE))
    rows = db.execute(f"{_SESSION} s WHERE {' AND '.join(clauses)} ORDER BY last_ns DESC, id DESC LIMIT ?",
                      (*args, size + 1)).fetchall()
    page = [SessionSummary(*r) for r in rows[:size]]
    more = len(rows) > size
    return SessionPage(page, _encode_cursor(page[-1]) if more else "")


def session(db: Db, session_id: str, limit: int) -> tuple[SessionSummary | None, list[Recording]]:
    row = db.execute(f"{_SESSION} WHERE id = ?", (session_id,)).fetchone()
    rows = db.execute(f"SELECT {schema.SELECT} FROM exchanges WHERE session_id = ? "
                      "ORDER BY start_ns, id LIMIT ?", (session_id, limit)).fetchall()
    return (SessionSummary(*row) if row else None), [db.exchange(r) for r in rows]


def count_runs(db: Db, service: str) -> int:
    """As `sessions` filters by service: the session's own, or any of its exchanges'."""
    if not service:
        return db.execute("SELECT COUNT(*) FROM sessions WHERE id LIKE ?", (RUN,)).fetchone()[0]
    return db.execute("SELECT COUNT(*) FROM sessions s WHERE id LIKE ? AND (service = ? OR EXISTS ("
                      "SELECT 1 FROM exchanges e WHERE e.session_id = s.id AND e.service = ?))",
                      (RUN, service, service)).fetchone()[0]


def runs(db: Db, recorded: str, size: int) -> list[RunSummary]:
    """Replay runs, newest first: of the recorded session `recorded` only, unless it is ""."""
    where, args = "", []
    if recorded:  # its runs' ids start `recorded~`; the run part holds no `~`
        where, args = " AND s.id >= ? AND s.id < ?", [recorded + RUN_SEPARATOR, recorded + RUN_SEPARATOR + "\U0010ffff"]
    rows = db.execute(f"{_RUN}{where} ORDER BY s.last_ns DESC, s.id DESC LIMIT ?",
                      (HIT, MOCK, REFUSAL, RUN, *args, max(1, min(size, MAX_PAGE)))).fetchall()
    found = [RunSummary(r[0], r[0].rpartition(RUN_SEPARATOR)[0], *r[1:]) for r in rows]
    return [run for run in found if not recorded or run.recorded == recorded]


def find(db: Db, prefix: str, limit: int) -> list[tuple[str, str]]:
    """What an id or the start of one names: a session by that id, else the sessions and
    exchanges it starts. A prefix without `~` names recordings before runs, so the runs of a
    recording never make its prefix ambiguous (runs count only when no recording matches)."""
    if db.execute("SELECT 1 FROM sessions WHERE id = ?", (prefix,)).fetchone():
        return [("session", prefix)]
    # A range on the primary key, not LIKE: ids may hold % and _.
    starts = "SELECT id FROM sessions WHERE id >= ? AND id < ?"
    bounds = (prefix, prefix + "\U0010ffff")
    sessions = []
    if RUN_SEPARATOR not in prefix:
        sessions = db.execute(f"{starts} AND id NOT LIKE ? ORDER BY id LIMIT ?", (*bounds, RUN, limit)).fetchall()
    if not sessions:
        sessions = db.execute(f"{starts} ORDER BY id LIMIT ?", (*bounds, limit)).fetchall()
    exchanges = db.execute("SELECT span_id FROM exchanges WHERE substr(span_id, 1, ?) = ? "
                           "ORDER BY id LIMIT ?", (len(prefix), prefix.lower(), limit)).fetchall()
    return ([("session", r[0]) for r in sessions] + [("exchange", r[0]) for r in exchanges])[:limit]


def count_stored(db: Db, spans: Iterable[tuple[str, str]]) -> int:
    return sum(db.execute("SELECT 1 FROM exchanges WHERE trace_id = ? AND span_id = ?", key).fetchone()
               is not None for key in spans)


def exchange(db: Db, span_id: str) -> Recording | None:
    row = db.execute(f"SELECT {schema.SELECT} FROM exchanges WHERE span_id = ? "
                     "ORDER BY id DESC LIMIT 1", (span_id,)).fetchone()
    return db.exchange(row) if row else None


def _encode_cursor(last: SessionSummary) -> str:
    return base64.urlsafe_b64encode(json.dumps([last.last_ns, last.id]).encode()).decode()


def _decode_cursor(cursor: str) -> list:
    try:
        last_ns, session_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return [int(last_ns), str(session_id)]
    except (ValueError, TypeError) as e:
        raise ValueError(f"invalid cursor {cursor[:40]!r}") from e
