"""Record then replay through a real mitmdump with the embedded store: no backend, no upstream."""

from __future__ import annotations

from pathlib import Path

import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

from testkit.recording import FAST_EXPORT, config, flow, recorded_count, stateful_upstream
from testkit.serve import Backend
from testkit.support import Gateway, wait_for


@pytest.mark.parametrize("session", ["shop-1", "a-new-session"])
def test_replay_gives_the_same_responses_in_order_without_upstream(
        tmp_path: Path, recording, session: str) -> None:
    db, upstream, original = recording
    upstream.close()
    with Gateway(config(db, enable_inject=True), tmp_path) as gw, \
            gw.client(headers={"x-sp-session-id": session}) as client:
        assert flow(client, upstream.url) == original
        # past the last recorded answer to a repeated request, the last one repeats
        assert client.get(f"{upstream.url}/cart").text == original[4][1]


def test_strict_replay_never_reaches_upstream(tmp_path: Path, recording) -> None:
    db, upstream, original = recording
    calls = len(upstream.received)  # still up: a forwarded request would show up here
    strict = config(db, enable_inject=True, lookup={"on_miss": "reject"})
    with Gateway(strict, tmp_path) as gw, gw.client(headers={"x-sp-session-id": "shop-1"}) as client:
        replayed = client.get(f"{upstream.url}/price?sku=a&currency=EUR")
        unrecorded = client.get(f"{upstream.url}/price?sku=zzz&currency=EUR")
    assert (replayed.status_code, replayed.text) == original[0]
    assert unrecorded.status_code == 404
    assert len(upstream.received) == calls
    with Store(StoreConfig(path=str(db)), read_only=True) as store:
        miss = store.misses()[0]
    assert miss.path == "/price?sku=zzz&currency=EUR" and "query.sku: recorded 'a', got 'zzz'" in miss.diff


def test_standalone_backend_records_and_answers_for_gateways(tmp_path: Path) -> None:
    """Two gateways, one after the other, sharing `softprobe serve` over HTTP."""
    backend = Backend(tmp_path / "shared.db")
    try:
        remote = {"sp_backend_url": backend.url, "export": FAST_EXPORT}
        with stateful_upstream() as upstream:
            with Gateway(remote, tmp_path) as gw, gw.client(headers={"x-sp-session-id": "shop-2"}) as c:
                original = flow(c, upstream.url)
                wait_for(lambda: recorded_count(backend.db) == 6)
        with Gateway({**remote, "enable_inject": True}, tmp_path) as gw, \
                gw.client(headers={"x-sp-session-id": "shop-2"}) as client:
            assert flow(client, upstream.url) == original
    finally:
        assert backend.stop() == 0
