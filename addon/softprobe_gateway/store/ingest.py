"""Recording: exchanges in (each span once), the sessions table kept with them, retention, and the
stored fingerprints kept in step with the matching rules. `rows` parses the bodies before the
writer is taken; the others run in the caller's write transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store import schema
from softprobe_gateway.store.forms import Forms
from softprobe_gateway.store.model import Fields, Recording

_REFINGERPRINT_BATCH = 500  # rows per query when the matching rules changed


def rows(exchanges: Iterable[Recording], forms: Forms, now_ns: int) -> list[tuple[Recording, dict[str, Any]]]:
    """Each exchange with its INSERT parameters."""
    return [(ex, schema.row(ex, route=ex.route, ingested_ns=now_ns,
                            fingerprint=forms.of_exchange(ex).fingerprint())) for ex in exchanges]


def insert(db: sqlite3.Connection, rows: Iterable[tuple[Recording, dict[str, Any]]]) -> int:
    """Store the exchanges whose span is not stored yet and count them into their sessions;
    returns how many were new."""
    stored: dict[str, list[Recording]] = {}
    for ex, row in rows:
        if db.execute(schema.INSERT, row).rowcount:
            stored.setdefault(ex.session_id, []).append(ex)
    for session_id, added in stored.items():
        db.execute(
            "INSERT INTO sessions (id, service, first_ns, last_ns, exchanges, errors) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
            "first_ns = min(first_ns, excluded.first_ns), last_ns = max(last_ns, excluded.last_ns), "
            "exchanges = exchanges + excluded.exchanges, errors = errors + excluded.errors",
            (session_id, added[0].service, min(ex.start_ns for ex in added),
             max(ex.end_ns or ex.start_ns for ex in added), len(added), sum(ex.error for ex in added)))
    return sum(map(len, stored.values()))


def apply_retention(db: sqlite3.Connection, config: StoreConfig) -> None:
    """Delete the oldest exchanges beyond `max_exchanges`, and those older than `max_age_hours`
    (by when they were stored: span clocks are other machines'), then fix their sessions."""
    # Row ids are dense (AUTOINCREMENT, every insert kept, only the oldest ever deleted), so
    # this keeps the newest max_exchanges rows without counting them.
    touched = {r[0] for r in db.execute(
        "DELETE FROM exchanges WHERE id <= (SELECT max(id) FROM exchanges) - ? "
        "RETURNING session_id", (config.max_exchanges,))}
    if config.max_age_hours:
        cutoff = time.time_ns() - int(config.max_age_hours * 3600e9)
        touched |= {r[0] for r in db.execute(
            "DELETE FROM exchanges WHERE ingested_ns < ? RETURNING session_id", (cutoff,))}
    for session_id in touched:
        db.execute("DELETE FROM sessions WHERE id = ?1 AND NOT EXISTS "
                   "(SELECT 1 FROM exchanges WHERE session_id = ?1)", (session_id,))
        db.execute("UPDATE sessions SET (first_ns, last_ns, exchanges, errors) = "
                   "(SELECT min(start_ns), max(max(end_ns), max(start_ns)), count(*), sum(error) "
                   "FROM exchanges WHERE session_id = ?1) WHERE id = ?1", (session_id,))


def refresh_fingerprints(db: sqlite3.Connection, forms: Forms) -> None:
    """Recompute stored fingerprints when the matching rules (ignored fields) changed."""
    signature = f"v1:{forms.ignore.signature}"
    row = db.execute("SELECT value FROM meta WHERE key = 'match'").fetchone()
    if row and row[0] == signature:
        return
    last = 0
    while found := db.execute("SELECT id, method, host, path, request_headers, request_body FROM exchanges "
                              "WHERE id > ? ORDER BY id LIMIT ?", (last, _REFINGERPRINT_BATCH)).fetchall():
        db.executemany("UPDATE exchanges SET fingerprint = ? WHERE id = ?", [
            (forms.of(m, h, p, Fields.from_json(hd).get("content-type", ""), b).fingerprint(), i)
            for i, m, h, p, hd, b in found])
        last = found[-1][0]
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('match', ?)", (signature,))
