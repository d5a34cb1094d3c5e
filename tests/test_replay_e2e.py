"""Record then replay through a real mitmdump with the embedded store: no backend, no upstream."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import httpx
import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store
from support import Gateway, HttpServer, Received, Reply, wait_for
from test_backend_server import Backend

FAST_EXPORT = {"flush_interval_ms": 20}


def stateful_upstream() -> HttpServer:
    """An API whose answers change with every call, so replay order is visible."""
    calls = itertools.count(1)
    cart: list[str] = []

    def reply(got: Received) -> Reply:
        n = next(calls)
        if got.path == "/cart" and got.method == "POST":
            cart.append(json.loads(got.body)["sku"])
            return 201, {"content-type": "application/json"}, json.dumps({"added": cart[-1], "call": n}).encode()
        if got.path == "/cart":
            return 200, {"content-type": "application/json"}, json.dumps({"items": cart, "call": n}).encode()
        if got.path.startswith("/price"):
            return 200, {"content-type": "text/plain", "x-call": str(n)}, f"price #{n}".encode()
        return 404, {}, b""
    return HttpServer(reply)


def flow(client: httpx.Client, base: str) -> list[tuple[int, str]]:
    """A multi-step session: repeated identical requests and JSON bodies among them."""
    steps = [
        client.get(f"{base}/price?sku=a&currency=EUR"),
        client.post(f"{base}/cart", json={"sku": "a", "qty": 1}),
        client.get(f"{base}/cart"),
        client.post(f"{base}/cart", json={"sku": "b", "qty": 2}),
        client.get(f"{base}/cart"),
        client.get(f"{base}/price?currency=EUR&sku=a"),
    ]
    return [(r.status_code, r.text) for r in steps]


def recorded_count(db: Path) -> int:
    if not db.exists():
        return 0
    with Store(StoreConfig(path=str(db)), read_only=True) as store:
        return sum(s.exchanges for s in store.sessions(size=100).sessions)


def config(db: Path, **extra: object) -> dict:
    return {"store": {"path": str(db)}, "export": FAST_EXPORT, **extra}


@pytest.fixture
def recording(tmp_path: Path):
    """A session recorded through the gateway against the live upstream."""
    db = tmp_path / "sp.db"
    with stateful_upstream() as upstream:
        with Gateway(config(db), tmp_path) as gw, gw.client(headers={"x-sp-session-id": "shop-1"}) as c:
            original = flow(c, upstream.url)
            wait_for(lambda: recorded_count(db) == 6)
        assert original[2][1] == json.dumps({"items": ["a"], "call": 3})
        yield db, upstream, original


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
