"""Recording, the part every engine shares: exchanges parsed into their INSERT parameters before
a connection is taken, what an insert stored counted into the sessions table, and the stored
fingerprints kept in step with the matching rules. How rows go in, and how the oldest go out
(retention), is each engine's own (`sqlite_engine`, `postgres_engine`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from softprobe_gateway.decisions.tracecontext import own_sessions
from softprobe_gateway.store import schema
from softprobe_gateway.store.db import Db
from softprobe_gateway.store.forms import Forms
from softprobe_gateway.store.model import Recording
from softprobe_gateway.store.schema import Layout

_REFINGERPRINT_BATCH = 500  # rows per query when the matching rules changed

Rows = list[tuple[Recording, dict[str, Any]]]


def rows(exchanges: Iterable[Recording], forms: Forms, now_ns: int, layout: Layout) -> Rows:
    """Each exchange with its INSERT parameters, in the engine's layout."""
    return [(ex, layout.row(ex, route=ex.route, ingested_ns=now_ns,
                            fingerprint=forms.of_exchange(ex).fingerprint())) for ex in exchanges]


def session_counts(stored: Iterable[Recording]) -> list[tuple[str, str, int, int, int, int]]:
    """What the stored exchanges add to their sessions: (id, service, first, last, exchanges,
    errors) per session, in id order (two writers upserting the same sessions lock them in one order)."""
    by_session: dict[str, list[Recording]] = {}
    for ex in stored:
        by_session.setdefault(ex.session_id, []).append(ex)
    return [(session_id, added[0].service, min(ex.start_ns for ex in added),
             max(ex.end_ns or ex.start_ns for ex in added), len(added), sum(ex.error for ex in added))
            for session_id, added in sorted(by_session.items())]


def runs_of_nothing_held(db: Db, sessions: Iterable[str]) -> list[tuple[str, str]]:
    """(session, recorded) for each of `sessions` whose id names a replay run
    (`<recorded>~<run>`) of a session this store does not hold. Browsing lists such a session among
    runs, not recordings: most likely a service's own session id with a `~` in it, to be said."""
    runs = [(session, own[1]) for session in sorted(set(sessions)) if len(own := own_sessions(session)) == 2]
    return [(session, recorded) for session, recorded in runs
            if db.execute("SELECT 1 FROM sessions WHERE id = ?", (recorded,)).fetchone() is None]


def refresh_fingerprints(db: Db, forms: Forms) -> None:
    """Recompute stored fingerprints when the matching rules (ignored fields) changed."""
    signature = f"v1:{forms.ignore.signature}"
    row = db.execute("SELECT value FROM meta WHERE key = 'match'").fetchone()
    if row and row[0] == signature:
        return
    last = 0
    while found := db.execute(f"SELECT {schema.SELECT} FROM exchanges WHERE id > ? ORDER BY id LIMIT ?",
                              (last, _REFINGERPRINT_BATCH)).fetchall():
        exchanges = [db.exchange(r) for r in found]
        db.executemany("UPDATE exchanges SET fingerprint = ? WHERE id = ?",
                       [(forms.of_exchange(ex).fingerprint(), ex.id) for ex in exchanges])
        last = exchanges[-1].id
    db.execute("INSERT INTO meta (key, value) VALUES ('match', ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (signature,))
