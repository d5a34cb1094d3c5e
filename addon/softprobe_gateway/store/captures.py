"""A capture session's recording as a Softprobe case file, written when the session closes.

Softprobe's runtime does this (its `openapi.yaml`, `POST /v1/sessions/{sessionId}/close`: "In
capture mode the runtime may persist a case before deleting the session. OSS accepts optional
query `out` as the output path override for the written case file", answered as `capturePath`),
to `$SOFTPROBE_CAPTURE_CASE_PATH` unless `out` says otherwise; `{sessionId}`, `{ts}` and `{mode}`
in the path are filled in as its runtime does. The case is the one `softprobe case export` writes:
the session's recordings, without what the gateway answered itself.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from softprobe_gateway.formats.casefile import case_document, profile_warnings
from softprobe_gateway.store.model import Recording
from softprobe_gateway.store.store import Store

CAPTURE_PATH_ENV = "SOFTPROBE_CAPTURE_CASE_PATH"
MAX_EXCHANGES = 10_000

log = logging.getLogger(__name__)


def recorded_case(case_id: str, exchanges: Sequence[Recording], created: datetime) -> tuple[dict[str, Any], int]:
    """The case of a session's exchanges, and how many were left out: what the gateway answered
    itself (hits, mocks, refusals) is no recording of the service."""
    recorded = [ex for ex in exchanges if not ex.answered_by]
    return case_document(case_id, recorded, created), len(exchanges) - len(recorded)


def case_path(template: str, session_id: str, now: datetime, base: Path) -> Path:
    """Where a capture session's case goes: the template with its placeholders filled in (a file
    path, relative to `base`, or a `file://` URL). ValueError for any other URL: object stores are
    not written to."""
    for placeholder, value in (("{sessionId}", session_id), ("{ts}", now.strftime("%Y%m%dT%H%M%SZ")),
                               ("{mode}", "capture")):
        template = template.replace(placeholder, value)
    if template.startswith("file://"):
        url = urlsplit(template)
        if url.netloc not in ("", "localhost"):
            raise ValueError(f"{template!r}: a file URL of another host")
        path = url2pathname(url.path)
    elif "://" in template:
        raise ValueError(f"{template!r}: a file path expected (only file:// URLs are written)")
    else:
        path = template
    if not path:
        raise ValueError("a file path expected")
    return base / path


@dataclass(frozen=True)
class CaptureCases:
    """Where closing a capture session writes its case: at a request's `out`, a `.json` file inside
    `root` (`serve --capture-dir`); else at `template` (`serve --capture-case-path`, the operator's:
    anywhere; empty: nowhere)."""

    template: str = ""
    root: Path = field(default_factory=Path.cwd)

    def path(self, out: str, session_id: str, now: datetime) -> Path | None:
        """The file to write, None for none. A request comes with the key every gateway holds, so
        its `out` never names a file elsewhere (`..`, an absolute path, a symbolic link out of
        `root`): ValueError naming what is wrong."""
        if not out:
            return case_path(self.template, session_id, now, Path.cwd()) if self.template else None
        if not out.endswith(".json"):
            raise ValueError("the path of a .json file expected")
        path = case_path(out, session_id, now, self.root).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"{out!r} is outside the capture directory ({self.root}: serve --capture-dir)")
        return path


def write_capture(store: Store, session_id: str, path: Path, now: datetime) -> None:
    """Write the session's recording as a case at `path`: replaced whole, never half-written, and
    readable by its owner only (it holds recorded bodies). OSError when it cannot be written."""
    _, exchanges = store.session(session_id, MAX_EXCHANGES)
    case, _ = recorded_case(session_id, exchanges, now)
    for warning in profile_warnings(case):
        log.warning(f"softprobe: case {session_id}: {warning}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            f.write(json.dumps(case, indent=2, ensure_ascii=False) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
