"""The travel demo runs end to end as `make demo` runs it, and records the whole session."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_travel_demo_records_the_search_book_pay_session(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "travel" / "run_demo.py"), "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr + (tmp_path / "gateway.log").read_text()
    session = re.search(r"== travel session (\S+):", out.stdout)[1]
    assert re.search(rf"{session}\s+front\s+.*\s6\s+0\s*$", out.stdout, re.MULTILINE), out.stdout
    timeline = out.stdout.split(f"== softprobe show {session}", 1)[1]
    steps = re.findall(r"(inbound|outbound)\s+(GET|POST) \S+?(/\S*)\s+->\s+(\d+)", timeline)
    assert [(d, m, p.split("?")[0], s) for d, m, p, s in steps] == [
        ("inbound", "GET", "/search", "200"), ("outbound", "GET", "/flights", "200"),
        ("inbound", "POST", "/book", "201"), ("outbound", "POST", "/bookings", "201"),
        ("inbound", "POST", "/pay", "200"), ("outbound", "POST", "/bookings/BK0001/payment", "200"),
    ]
    # each outbound call nested under the inbound request that made it (front passes tracestate on)
    nesting = re.findall(r"\+[\d.]+s  ( *)[0-9a-f]{8}  (inbound|outbound)", timeline)
    assert [(len(pad), d) for pad, d in nesting] == [(0, "inbound"), (4, "outbound")] * 3, timeline
