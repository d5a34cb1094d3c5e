"""Recording through a real gateway into the embedded store: its config, a stateful upstream, counts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import httpx
import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

from testkit.support import Gateway, HttpServer, Received, Reply, wait_for

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
