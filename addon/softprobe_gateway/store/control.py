"""The control API's sessions (Softprobe's `spec/protocol/http-control-api.md`), kept in the
store's `control_sessions` table: every gateway and every `softprobe serve` on the same file sees
the same sessions, and a restarted one finds them again. A closed session's row stays, marked
closed, so its id is refused afterwards rather than mistaken for an unknown one's.

Every change of what the session decides with (case, rules, policy, fixtures) bumps
`sessionRevision`; counters do not.

A gateway on the embedded store opens it read-only (its export worker is the store's writer), yet
answering under a session counts: its counters go through the engine's `side_writing`, one short
`UPDATE` each, taken on the lookup's thread.

Two closes of one session at once (two replicas of `serve` on one database) are decided by the
database: `close` is a conditional update, and only the close it reports True for writes the case.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.formats import spans
from softprobe_gateway.store.db import Db, StoreError
from softprobe_gateway.store.store import Store

MODES = ("capture", "replay", "generate")
# What each mutating route replaces: its column.
DOCUMENTS = {"policy": "policy", "rules": "rules", "case": "case_document", "fixtures": "fixtures"}
COUNTERS = ("injected", "strict_misses")  # per lookup; `extracted` per export batch
_COLUMNS = ("id, mode, revision, policy, rules, case_document, fixtures, injected, extracted, "
            "strict_misses")
ID_PREFIX = "sess_"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ControlSession:
    id: str
    mode: str
    revision: int = 0
    policy: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)  # the rules document as posted
    case: dict[str, Any] = field(default_factory=dict)  # the loaded case document, or {}
    fixtures: dict[str, Any] = field(default_factory=dict)
    injected: int = 0
    extracted: int = 0
    strict_misses: int = 0

    @property
    def rule_list(self) -> list[dict[str, Any]]:
        rules = self.rules.get("rules")
        return [r for r in rules if isinstance(r, dict)] if isinstance(rules, list) else []

    @property
    def case_rules(self) -> list[dict[str, Any]]:
        rules = self.case.get("rules")
        return [r for r in rules if isinstance(r, dict)] if isinstance(rules, list) else []

    def stats(self) -> dict[str, int]:
        return {"injectedSpans": self.injected, "extractedSpans": self.extracted,
                "strictMisses": self.strict_misses}


class Sessions:
    """The control sessions of one store (thread-safe: the store's connections are)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, mode: str, policy: dict[str, Any] | None = None) -> ControlSession:
        session = ControlSession(f"{ID_PREFIX}{secrets.token_hex(12)}", mode, policy=policy or {})
        with self.store.transaction() as db:
            db.execute(f"INSERT INTO control_sessions ({_COLUMNS}, closed, created_ns) "
                       "VALUES (?, ?, 0, ?, '{}', '{}', '{}', 0, 0, 0, 0, ?)",
                       (session.id, mode, json.dumps(session.policy), time.time_ns()))
        return session

    def get(self, session_id: str) -> ControlSession | None:
        """The open session of this id, or None (unknown or closed)."""
        with self.store.reader() as db:
            return _read(db, session_id)

    def revision(self, session_id: str) -> int | None:
        """The open session's revision alone (a cheap check before a cached state is reused). Asked
        on every lookup: an id no `create` can have made (a recorded session's) is answered
        without a query."""
        if not session_id.startswith(ID_PREFIX):
            return None
        with self.store.reader() as db:
            row = db.execute("SELECT revision FROM control_sessions WHERE id = ? AND closed = 0",
                             (session_id,)).fetchone()
        return row[0] if row else None

    def replace(self, session_id: str, document: str, value: dict[str, Any]) -> ControlSession | None:
        """Replace one of the session's documents (`DOCUMENTS`), bumping its revision."""
        column = DOCUMENTS[document]
        with self.store.transaction() as db:
            changed = db.execute(f"UPDATE control_sessions SET {column} = ?, revision = revision + 1 "
                                 "WHERE id = ? AND closed = 0", (json.dumps(value), session_id)).rowcount
            return _read(db, session_id) if changed else None

    def count(self, session_id: str, counter: str, n: int = 1) -> None:
        """Add to one of the session's counters (`COUNTERS`); nothing for a closed or unknown id.
        A counter that cannot be written is logged: it never fails the lookup it counts."""
        assert counter in COUNTERS
        try:
            with self.store.engine.side_writing() as db:
                db.execute(f"UPDATE control_sessions SET {counter} = {counter} + ? WHERE id = ? AND closed = 0",
                           (n, session_id))
        except StoreError as e:
            log.warning(f"softprobe: control session {session_id}: {counter} not counted: {e}")

    def ingest(self, traces: TracesData) -> None:
        """Store an export batch's exchanges, and count them under their control sessions
        (`extractedSpans`, ids of no open session changing nothing), in one transaction: what
        `serve`'s `/v1/traces` and the embedded store's writer both do."""
        exchanges = spans.extract_exchanges(traces)
        self.store.add(exchanges)
        per_session = Counter(ex.session_id for ex in exchanges if ex.session_id.startswith(ID_PREFIX))
        if per_session:
            with self.store.transaction() as db:
                db.executemany("UPDATE control_sessions SET extracted = extracted + ? WHERE id = ? AND closed = 0",
                               [(n, sid) for sid, n in per_session.items()])

    def close(self, session_id: str) -> bool:
        """Close the session for good; False when it was not open (another close won)."""
        with self.store.transaction() as db:
            return db.execute("UPDATE control_sessions SET closed = 1 WHERE id = ? AND closed = 0",
                              (session_id,)).rowcount == 1

    def reopen(self, session_id: str) -> None:
        """Open a session this process closed again: its case could not be written."""
        with self.store.transaction() as db:
            db.execute("UPDATE control_sessions SET closed = 0 WHERE id = ?", (session_id,))

    def open_sessions(self) -> list[ControlSession]:
        with self.store.reader() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM control_sessions WHERE closed = 0 ORDER BY created_ns")]
            return [s for s in (_read(db, i) for i in ids) if s is not None]


def _read(db: Db, session_id: str) -> ControlSession | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM control_sessions WHERE id = ? AND closed = 0",
                     (session_id,)).fetchone()
    if row is None:
        return None
    sid, mode, revision, policy, rules, case, fixtures, injected, extracted, strict = row
    return ControlSession(sid, mode, revision, json.loads(policy), json.loads(rules), json.loads(case),
                          json.loads(fixtures), injected, extracted, strict)
