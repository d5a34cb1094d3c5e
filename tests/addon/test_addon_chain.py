"""The flow dispatch of the addons in use (`proxy.addon_chain`) through mitmproxy's own addon
manager, and what it relies on in mitmproxy: these tests fail loudly when an upgrade changes a
default addon's hooks, the dispatch method it stands in for, or the paths flow events take."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import tomllib
from pathlib import Path

import mitmproxy
import pytest
from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy.addons import default_addons, dumper, errorcheck, keepserving, readfile, script, termlog
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import taddons, tflow
from mitmproxy.version import VERSION
from packaging.specifiers import SpecifierSet
from softprobe_gateway.proxy import addon_chain
from softprobe_gateway.proxy.addon_chain import FLOW_HOOKS, LIFECYCLE, AddonChain, handlers, left_out

from testkit.support import ROOT

MITMPROXY = Path(mitmproxy.__file__).parent


def mitmdump_chain() -> list:
    """The addons `mitmdump` adds, in its order (`tools/dump.py`), without the termlog."""
    return [*default_addons(), dumper.Dumper(), keepserving.KeepServing(), readfile.ReadFileStdin(),
            errorcheck.ErrorCheck()]


def test_mitmproxy_is_the_version_pinned_for_these_internals() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if re.match(r"mitmproxy\b", d)]
    assert VERSION in SpecifierSet(pin.removeprefix("mitmproxy")) and pin.endswith("<11.1"), (VERSION, pin)


def test_every_default_addon_has_the_flow_hooks_its_rule_was_written_for() -> None:
    """A new default addon, or a hook gained or lost by one, needs a look at `addon_chain.RULES`."""
    import mitmproxy.proxy.layers  # noqa: F401 (registers every flow hook)
    flow_hooks = set(hooks.all_hooks) - LIFECYCLE
    for addon in [*mitmdump_chain(), termlog.TermLog()]:
        if isinstance(addon, script.ScriptLoader):
            assert hasattr(addon, "addons")  # dispatched whole: the scripts below it are looked up per event
            continue
        defined = {h for h in flow_hooks if callable(getattr(addon, h, None))}
        assert FLOW_HOOKS.get(type(addon)) == defined, type(addon).__name__
    assert set(addon_chain.RULES) <= set(FLOW_HOOKS)


# What the dispatch stands in for, as mitmproxy 11.0 writes it: a change here needs a new look at
# `AddonChain.handle_lifecycle`, `_trigger` and `hook_args`, and at when the table is dropped
# (then update the digest).
REPLACED = [addonmanager.AddonManager.handle_lifecycle, addonmanager.AddonManager.trigger_event,
            addonmanager.AddonManager.invoke_addon, addonmanager.AddonManager._iter_hooks,
            addonmanager.traverse, addonmanager.safecall, hooks.Hook.args,
            # the handlers' table is dropped when these change the tree: scripts change it only so
            addonmanager.AddonManager.register, addonmanager.AddonManager.remove,
            script.Script.loadscript, script.ScriptLoader.configure]
REPLACED_DIGEST = "6ff7efaf2702c7e0"


def test_the_dispatch_it_stands_in_for_is_unchanged() -> None:
    source = "".join(inspect.getsource(f) for f in REPLACED)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == REPLACED_DIGEST


def test_every_flow_event_goes_through_handle_lifecycle() -> None:
    """The proxy server's hooks, flows read from a file and client replay all call
    `addons.handle_lifecycle`; `trigger_event` only for running and done. A new caller of either
    may be a flow path the dispatch does not see."""
    callers = {}
    for path in sorted(MITMPROXY.rglob("*.py")):
        if "test" in path.relative_to(MITMPROXY).parts:
            continue
        for call in re.findall(r"addons\.(handle_lifecycle|trigger_event)\(([^)]*)\)", path.read_text()):
            callers.setdefault(str(path.relative_to(MITMPROXY)), []).append(call)
    assert callers == {
        "addons/clientplayback.py": [("handle_lifecycle", "hook")],
        "master.py": [("trigger_event", "hooks.RunningHook("), ("trigger_event", "hooks.DoneHook("),
                      ("handle_lifecycle", "e")],
        "proxy/mode_servers.py": [("handle_lifecycle", "hook")],
    }


def test_at_the_defaults_only_block_and_the_core_addons_stay() -> None:
    with taddons.context(*mitmdump_chain(), loadcore=False) as tctx:
        tctx.options.update(flow_detail=0)
        out = {name.split(" ")[0] for name in left_out(tctx.master.addons.chain, tctx.options)}
        assert out == {"AntiCache", "AntiComp", "BlockList", "Dumper", "MapLocal", "MapRemote", "ModifyBody",
                       "ModifyHeaders", "ProxyAuth", "Save", "SaveHar", "ServerPlayback", "StickyAuth",
                       "StickyCookie", "UpdateAltSvc", "UpstreamAuth"}
        request = [type(a).__name__ for a in handlers(tctx.master.addons.chain, "request", tctx.options)]
        assert request == ["DisableH2C", "Onboarding", "ScriptLoader"]
        assert [type(a).__name__ for a in handlers(tctx.master.addons.chain, "client_connected",
                                                   tctx.options)] == ["Block", "ScriptLoader"]
        assert [type(a).__name__ for a in handlers(tctx.master.addons.chain, "update", tctx.options)] == [
            "ScriptLoader"]


@pytest.mark.parametrize("option, value, addon", [
    ("anticache", True, "AntiCache"), ("anticomp", True, "AntiComp"), ("block_list", ["/~q/403"], "BlockList"),
    ("flow_detail", 0, "Dumper"), ("map_local", ["|/x|/tmp"], "MapLocal"), ("map_remote", ["|a|b"], "MapRemote"),
    ("modify_body", ["/a/b"], "ModifyBody"), ("modify_headers", ["/h/v"], "ModifyHeaders"),
    ("proxyauth", "any", "ProxyAuth"), ("save_stream_file", "FLOWS", "Save"), ("hardump", "FLOWS", "SaveHar"),
    ("stickyauth", ".", "StickyAuth"), ("stickycookie", ".", "StickyCookie"),
    ("mode", ["reverse:http://127.0.0.1:9"], "UpdateAltSvc"), ("upstream_auth", "u:p", "UpstreamAuth"),
    ("onboarding", False, "Onboarding"), ("strip_ech", False, "StripDnsHttpsRecords"),
])
def test_an_option_set_changes_whether_its_addon_is_dispatched(tmp_path, option, value, addon) -> None:
    value = str(tmp_path / "f") if value == "FLOWS" else value
    with taddons.context(*mitmdump_chain(), loadcore=False) as tctx:
        before = {n.split(" ")[0] for n in left_out(tctx.master.addons.chain, tctx.options)}
        tctx.options.update(**{option: value})
        after = {n.split(" ")[0] for n in left_out(tctx.master.addons.chain, tctx.options)}
        assert before ^ after == {addon}


class Spy:
    """A top-level addon of someone else's: it gets every hook it has a handler for."""

    def __init__(self, name: str, halt: bool = False) -> None:
        self.name, self.halt = name, halt
        self.seen: list[str] = []

    def request(self, flow) -> None:
        self.seen.append("request")
        if self.halt:
            raise exceptions.AddonHalt

    def update(self, flows) -> None:
        self.seen.append("update")


class Parent:
    """An addon with sub-addons, as a script is: they are looked up at each event."""

    def __init__(self) -> None:
        self.addons = [Spy("nested")]


class Faulty:
    def request(self, flow) -> None:
        raise RuntimeError("a bug in someone's addon")


def test_the_dispatch_reaches_the_addons_in_use_and_follows_the_options(caplog) -> None:
    asyncio.run(dispatch())
    assert "Addon error: a bug in someone's addon" in caplog.text  # logged by mitmproxy, the event went on


async def dispatch() -> None:
    chain, parent, spy, after = AddonChain(), Parent(), Spy("spy", halt=True), Spy("after")
    with taddons.context(*default_addons(), chain, parent, Faulty(), spy, after, loadcore=False) as tctx:
        manager = tctx.master.addons
        chain.running()
        assert manager.handle_lifecycle == chain.handle_lifecycle

        def flow():
            f = tflow.tflow()
            f.request.headers["if-none-match"] = "x"  # what anticache strips
            return f

        idle = flow()
        await manager.handle_lifecycle(http_layer.HttpRequestHook(idle))
        assert "if-none-match" in idle.request.headers  # AntiCache left out
        assert spy.seen == ["request", "update"] and after.seen == ["update"]  # AddonHalt stops the event
        assert parent.addons[0].seen == ["request", "update"]
        parent.addons.append(late := Spy("late"))
        manager.register(late)  # as an addon that manages addons does (a script loaded or reloaded)
        await manager.handle_lifecycle(http_layer.HttpRequestHook(flow()))
        assert parent.addons[1].seen == ["request", "update"]

        tctx.options.update(anticache=True)  # as mitmweb's editor or `:set` does
        on = flow()
        await manager.handle_lifecycle(http_layer.HttpRequestHook(on))
        assert "if-none-match" not in on.request.headers
        assert after.seen == ["update"] * 3

        recorded = tflow.tflow(resp=True)  # `replay.server`, a command: an `update` without flows follows
        tctx.master.commands.call("replay.server", [recorded])
        replayed = tflow.tflow()
        await manager.handle_lifecycle(http_layer.HttpRequestHook(replayed))
        assert replayed.response is not None and replayed.is_replay == "response"

        manager.remove(spy)  # the chain changed: the table follows it
        await manager.handle_lifecycle(http_layer.HttpRequestHook(flow()))
        assert after.seen.count("request") == 1 and after.seen[-2:] == ["request", "update"]

        chain.done()
        assert not {"handle_lifecycle", "register", "remove"} & set(vars(manager))  # mitmproxy's own again
