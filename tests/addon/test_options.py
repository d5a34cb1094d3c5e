"""The options through mitmproxy's test context: declared with help, changed at runtime (a new
runtime, a rejected change rolled back), the admin endpoint kept when a move is refused."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from mitmproxy import exceptions
from mitmproxy.addons import proxyserver
from softprobe_gateway.proxy import options

from testkit.support import LOOPBACK, free_port, started_addons


def test_options_changed_at_runtime_build_a_new_runtime(tmp_path):
    """mitmweb's options editor and `:set` go through OptManager.update, as here."""
    asyncio.run(_runtime_changes(tmp_path))


async def _runtime_changes(tmp_path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(f"sp_backend_url: 'file:{tmp_path / 'a.jsonl'}'\n")
    with started_addons(config, proxyserver.Proxyserver()) as gw:
        tctx, addon = gw.tctx, gw.lifecycle
        first = addon.runtime
        assert first.config.local_path == str(tmp_path / "a.jsonl") and not first.config.enable_inject

        tctx.options.update(softprobe_store=str(tmp_path / "replay.db"), softprobe_backend_url="",
                            softprobe_lookups="on", softprobe_strict="on")
        second = addon.runtime
        assert second is not first and second.lookup is not None
        assert second.config.store.path == str(tmp_path / "replay.db")
        assert second.config.lookup.on_miss == "reject"
        assert tctx.options.connection_strategy == "lazy"  # a hit must not connect upstream

        with pytest.raises(exceptions.OptionsError, match="softprobe_max_body: expected a size"):
            tctx.options.update(softprobe_max_body="huge")
        assert addon.runtime is second and tctx.options.softprobe_max_body is None  # rolled back
        await addon.done()


def test_every_option_has_help_and_names_its_key():
    for option in options.OPTIONS:
        assert option.name.startswith("softprobe_") and len(option.help) > 20
    assert "public_key" not in {o.key for o in options.OPTIONS}  # env only: not in process lists




def test_a_refused_admin_move_at_runtime_keeps_the_admin_endpoint(tmp_path):
    """`:set softprobe_admin=` a taken port is refused and rolled back; /readyz stays where it was."""
    asyncio.run(_refused_admin_move(tmp_path))


async def _refused_admin_move(tmp_path) -> None:
    config = tmp_path / "g.yaml"
    admin = free_port()
    config.write_text(f"sp_backend_url: 'file:{tmp_path / 'a.jsonl'}'\nadmin_listen: '{LOOPBACK}:{admin}'\n")
    with started_addons(config, proxyserver.Proxyserver()) as gw, socket.socket() as taken:
        tctx, addon = gw.tctx, gw.lifecycle
        taken.bind((LOOPBACK, 0))
        taken.listen()
        with pytest.raises(exceptions.OptionsError, match="cannot listen on"):
            tctx.options.update(softprobe_admin=f"{LOOPBACK}:{taken.getsockname()[1]}")
        assert tctx.options.softprobe_admin is None  # rolled back
        answer = await asyncio.to_thread(httpx.get, f"http://{LOOPBACK}:{admin}/healthz", trust_env=False)
        assert answer.status_code == 200
        await addon.done()
