"""Sampling through real gateways: sessions recorded whole or not at all, the same choice in a
second gateway, explicit sessions and traceparent flags honoured, budgets, a live rate change."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import yaml
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

from testkit.recording import FAST_EXPORT, recorded_count
from testkit.support import Gateway, echo_upstream, free_port, wait_for


def gateway_config(db: Path, admin: int, **sampling: object) -> dict:
    return {"store": {"path": str(db)}, "export": FAST_EXPORT, "sampling": sampling,
            "admin_listen": f"127.0.0.1:{admin}"}


def recorded_sessions(db: Path) -> dict[str, int]:
    """Every recorded session and its exchange count, page by page."""
    found: dict[str, int] = {}
    with Store(StoreConfig(path=str(db)), read_only=True) as store:
        cursor = None
        while cursor != "":
            page = store.sessions(size=100, cursor=cursor or "")
            found |= {s.id: s.exchanges for s in page.sessions}
            cursor = page.next_cursor
    return found


def skipped(gw: Gateway, admin: int, reason: str) -> float:
    return gw.metric(admin, f'softprobe_exchanges_skipped_total{{reason="{reason}"}}')


def test_a_quarter_of_the_sessions_whole_and_the_same_ones_in_a_second_gateway(tmp_path: Path) -> None:
    """Mid-chain hops: each session arrives in `tracestate` only, three calls each."""
    ids = [f"sp-session-{uuid.uuid4()}" for _ in range(240)]
    admins = free_port(), free_port()
    dbs = tmp_path / "a.db", tmp_path / "b.db"
    with echo_upstream() as upstream, \
            Gateway(gateway_config(dbs[0], admins[0], rate=0.25), tmp_path) as a, \
            Gateway(gateway_config(dbs[1], admins[1], rate=0.25), tmp_path) as b:
        for gw in (a, b):
            with gw.client() as client:
                for session in ids:
                    for call in range(3):
                        client.get(f"{upstream.url}/orders/{call}", headers={"tracestate": f"x-sp-session-id={session}"})
        counted = [wait_for(lambda gw=gw, admin=admin: gw.metric(admin, "softprobe_exchanges_recorded_total"))
                   for gw, admin in zip((a, b), admins)]
        for db, count in zip(dbs, counted):
            wait_for(lambda db=db, count=count: recorded_count(db) == count)
        sampled_out = skipped(a, admins[0], "sampled_out")
    first, second = recorded_sessions(dbs[0]), recorded_sessions(dbs[1])
    assert 0.15 < len(first) / len(ids) < 0.35, len(first)
    assert set(first) == set(second) and set(first) <= set(ids)  # the same choice, per session
    assert set(first.values()) == {3}  # each recorded session whole
    assert sampled_out == 3 * (len(ids) - len(first))  # the rest counted, never silent


def recorded_paths(db: Path) -> set[str]:
    with Store(StoreConfig(path=str(db)), read_only=True) as store:
        return {ex.path for s in store.sessions(size=100).sessions for ex in store.session(s.id)[1]}


def test_explicit_sessions_and_traceparent_flags_and_budgets(tmp_path: Path) -> None:
    db, admin = tmp_path / "s.db", free_port()
    sampled, unsampled = (f"00-{uuid.uuid4().hex}-{'1' * 16}-{flag}" for flag in ("01", "00"))
    with echo_upstream() as upstream, \
            Gateway(gateway_config(db, admin, rate=0.0, max_exchanges_per_s=5), tmp_path) as gw, \
            gw.client() as client:
        client.get(f"{upstream.url}/plain", headers={"tracestate": "x-sp-session-id=nobody"})
        assert upstream.received[-1].headers["traceparent"].endswith("-00")  # the decision passed on
        client.get(f"{upstream.url}/test", headers={"x-softprobe-session-id": "test-run-1"})
        assert upstream.received[-1].headers["traceparent"].endswith("-01")
        client.get(f"{upstream.url}/parent-yes", headers={"traceparent": sampled})
        client.get(f"{upstream.url}/parent-no", headers={"traceparent": unsampled})
        wait_for(lambda: recorded_count(db) == 2)
        assert skipped(gw, admin, "sampled_out") == 2
        assert recorded_paths(db) == {"/test", "/parent-yes"}
        # The budget: five a second at most (a second's worth saved up), the rest counted.
        started = time.monotonic()
        for n in range(20):
            client.get(f"{upstream.url}/burst/{n}", headers={"x-softprobe-session-id": "burst"})
        elapsed = time.monotonic() - started
        over = skipped(gw, admin, "over_budget")
        assert 1 <= 20 - over <= 5 + 5 * elapsed + 1, (over, elapsed)
        wait_for(lambda: recorded_count(db) == 2 + 20 - over)


def test_the_rate_from_the_option_and_a_live_edit_of_the_file(tmp_path: Path) -> None:
    db, admin = tmp_path / "r.db", free_port()
    with echo_upstream() as upstream, Gateway(gateway_config(db, admin, rate=0.0), tmp_path,
                                              options={"softprobe_sampling_rate": "1"}) as gw, \
            gw.client() as client:
        client.get(f"{upstream.url}/one")
        wait_for(lambda: recorded_count(db) == 1)  # the option overrides the file's 0
    with echo_upstream() as upstream, Gateway(gateway_config(db, admin, rate=1.0), tmp_path) as gw, \
            gw.client() as client:
        client.get(f"{upstream.url}/two")
        wait_for(lambda: recorded_count(db) == 2)
        gw.config_path.write_text(yaml.safe_dump(gateway_config(db, admin, rate=0.0)))
        wait_for(lambda: gw.metric(admin, "softprobe_config_version") == 2)  # reloaded live
        client.get(f"{upstream.url}/three")
        wait_for(lambda: skipped(gw, admin, "sampled_out") == 1)
        assert recorded_count(db) == 2
