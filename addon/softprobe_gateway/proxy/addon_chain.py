"""Only the mitmproxy addons in use in the flow dispatch.

mitmproxy calls every addon of its chain (about thirty-five in mitmdump) for every event of every
flow, and an `update` after each, though a gateway uses a handful of them. `AddonChain` replaces,
on the running addon manager only, the one method every flow event goes through
(`AddonManager.handle_lifecycle`: the proxy server's connections, flows read with `-r`, client
replay) with one that calls, for each hook, only the addons that have a handler for it and can act
under the options as they are. Everything else stays mitmproxy's: the chain, `load`, `configure`,
`running`, `done`, commands. A left-out addon is still configured, so an option set while running
(mitmweb's options editor, `:set`) brings it back before the next flow: `configure` drops the
table and the next event builds it anew, as does any addon registered or removed (a script
loaded, reloaded or unloaded: `AddonManager.register` and `remove`, shadowed on that manager too).

It calls the handlers itself, as `trigger_event` and `invoke_addon` do, without their generators
and context manager per addon (about 2 us of each event), and lets mitmproxy's `safecall` log an
error. The one module that touches mitmproxy's internals (that method and the dispatch it
replicates, and the default addons' hooks below, as mitmproxy 11.0 defines them):
tests/addon/test_addon_chain.py fails when mitmproxy changes any of them.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import addonmanager, ctx, exceptions, flow, hooks
from mitmproxy.addons import (anticache, anticomp, block, blocklist, browser, clientplayback, command_history,
                              comment, core, cut, disable_h2c, dns_resolver, dumper, errorcheck, export,
                              keepserving, maplocal, mapremote, modifybody, modifyheaders, next_layer,
                              onboarding, proxyauth, proxyserver, readfile, save, savehar, serverplayback,
                              stickyauth, stickycookie, strip_dns_https_records, termlog, tlsconfig,
                              update_alt_svc, upstream_auth)
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

log = logging.getLogger(__name__)

# Hooks every addon keeps receiving from mitmproxy itself, never through the flow dispatch.
LIFECYCLE = frozenset({"load", "configure", "running", "done", "add_log"})


@dataclass(frozen=True)
class Rule:
    """When a default addon has something to do with a flow, given the options (and, for server
    replay, the flows a command loaded)."""

    in_use: Callable[[Any, Any], bool]  # (addon, options)
    idle: str  # why it is left out, for the log


def _reverse(options: Any) -> bool:
    return any(isinstance(ProxyMode.parse(m), ReverseMode) for m in options.mode)


RULES: dict[type, Rule] = {
    anticache.AntiCache: Rule(lambda a, o: o.anticache, "anticache off"),
    anticomp.AntiComp: Rule(lambda a, o: o.anticomp, "anticomp off"),
    blocklist.BlockList: Rule(lambda a, o: bool(o.block_list), "no block_list"),
    dumper.Dumper: Rule(lambda a, o: o.flow_detail > 0, "flow_detail=0"),
    maplocal.MapLocal: Rule(lambda a, o: bool(o.map_local), "no map_local"),
    mapremote.MapRemote: Rule(lambda a, o: bool(o.map_remote), "no map_remote"),
    modifybody.ModifyBody: Rule(lambda a, o: bool(o.modify_body), "no modify_body"),
    modifyheaders.ModifyHeaders: Rule(lambda a, o: bool(o.modify_headers), "no modify_headers"),
    onboarding.Onboarding: Rule(lambda a, o: o.onboarding, "onboarding off"),
    proxyauth.ProxyAuth: Rule(lambda a, o: bool(o.proxyauth), "no proxyauth"),
    save.Save: Rule(lambda a, o: bool(o.save_stream_file), "no -w/save_stream_file"),
    savehar.SaveHar: Rule(lambda a, o: bool(o.hardump), "no hardump"),
    # `replay.server` (a command, not an option) loads flows too: it sends an `update` without flows.
    serverplayback.ServerPlayback: Rule(lambda a, o: bool(o.server_replay or a.flowmap), "no server_replay"),
    stickyauth.StickyAuth: Rule(lambda a, o: bool(o.stickyauth), "no stickyauth"),
    stickycookie.StickyCookie: Rule(lambda a, o: bool(o.stickycookie), "no stickycookie"),
    strip_dns_https_records.StripDnsHttpsRecords: Rule(lambda a, o: o.strip_ech, "strip_ech off"),
    update_alt_svc.UpdateAltSvc: Rule(lambda a, o: not o.keep_alt_svc_header and _reverse(o),
                                      "no reverse mode"),
    upstream_auth.UpstreamAuth: Rule(lambda a, o: o.upstream_auth is not None, "no upstream_auth"),
}

# The flow hooks of mitmproxy's own addons (every hook but LIFECYCLE's) as the rules above were
# written for: the unit test compares them with the installed mitmproxy. Those without a rule
# always act (`block_global`/`block_private`, h2c, the proxy server, DNS, TLS) or have no flow hook.
FLOW_HOOKS: dict[type, frozenset[str]] = {
    anticache.AntiCache: frozenset({"request"}),
    anticomp.AntiComp: frozenset({"request"}),
    block.Block: frozenset({"client_connected"}),
    blocklist.BlockList: frozenset({"request"}),
    browser.Browser: frozenset(),
    clientplayback.ClientPlayback: frozenset(),
    command_history.CommandHistory: frozenset(),
    comment.Comment: frozenset(),
    core.Core: frozenset(),
    cut.Cut: frozenset(),
    disable_h2c.DisableH2C: frozenset({"request"}),
    dns_resolver.DnsResolver: frozenset({"dns_request"}),
    dumper.Dumper: frozenset({"response", "error", "websocket_message", "websocket_end", "tcp_error",
                              "tcp_message", "udp_error", "udp_message", "dns_response", "dns_error"}),
    errorcheck.ErrorCheck: frozenset(),
    export.Export: frozenset(),
    keepserving.KeepServing: frozenset(),
    maplocal.MapLocal: frozenset({"request"}),
    mapremote.MapRemote: frozenset({"request"}),
    modifybody.ModifyBody: frozenset({"request", "response"}),
    modifyheaders.ModifyHeaders: frozenset({"requestheaders", "responseheaders"}),
    next_layer.NextLayer: frozenset({"next_layer"}),
    onboarding.Onboarding: frozenset({"request"}),
    proxyauth.ProxyAuth: frozenset({"http_connect", "requestheaders", "socks5_auth"}),
    proxyserver.Proxyserver: frozenset({"server_connect"}),
    readfile.ReadFileStdin: frozenset(),
    save.Save: frozenset({"request", "response", "error", "websocket_end", "tcp_start", "tcp_end", "tcp_error",
                          "udp_start", "udp_end", "udp_error", "dns_request", "dns_response", "dns_error"}),
    savehar.SaveHar: frozenset({"response", "error", "websocket_end"}),
    serverplayback.ServerPlayback: frozenset({"request"}),
    stickyauth.StickyAuth: frozenset({"request"}),
    stickycookie.StickyCookie: frozenset({"request", "response"}),
    strip_dns_https_records.StripDnsHttpsRecords: frozenset({"dns_response"}),
    termlog.TermLog: frozenset(),
    tlsconfig.TlsConfig: frozenset({"tls_clienthello", "tls_start_client", "tls_start_server",
                                    "quic_start_client", "quic_start_server"}),
    update_alt_svc.UpdateAltSvc: frozenset({"responseheaders"}),
    upstream_auth.UpstreamAuth: frozenset({"http_connect_upstream", "requestheaders"}),
}


def idle(addon: Any, options: Any) -> str | None:
    """Why `addon` can do nothing with a flow under `options` (None: it can). Matched by exact
    class: a subclass may have hooks of its own."""
    rule = RULES.get(type(addon))
    return None if rule is None or rule.in_use(addon, options) else rule.idle


def handlers(chain: Sequence[Any], hook: str, options: Any) -> tuple[Any, ...]:
    """The addons of `chain`, in order, that one `hook` event goes to: those with a handler for
    it that are not idle, and every addon with sub-addons (the scripts, ours included: their
    handlers are looked up when the table is built, after any script is loaded or reloaded)."""
    return tuple(a for a in chain if hasattr(a, "addons")
                 or (callable(getattr(a, hook, None)) and idle(a, options) is None))


def left_out(chain: Sequence[Any], options: Any) -> list[str]:
    """`Name (why)` of each addon of `chain` left out of the flow dispatch by its rule."""
    return [f"{type(a).__name__} ({why})" for a in chain if (why := idle(a, options))]


class _Errors(logging.Handler):
    """Whether an error was logged: mitmproxy then exits after `running` (its `ErrorCheck`), and
    the error stays the one line start-up printed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = True


class AddonChain:
    """The flow dispatch of mitmproxy's addon manager, over the handlers in use, from `running`
    until `done` (a reload of the script puts a new one in place)."""

    def __init__(self) -> None:
        self.manager: addonmanager.AddonManager | None = None
        # hook name -> for each addon of the chain it goes to, its handlers and its sub-addons'
        # (depth first, as mitmproxy walks them); built on first use, dropped on any change
        self._table: dict[str, tuple[tuple[Callable, ...], ...]] = {}
        self._shadows: dict[str, Callable] = {}  # the manager's methods this chain stands in for
        self._left_out: list[str] | None = None  # as last logged
        self._errors = _Errors()

    def load(self, loader: Any) -> None:
        logging.getLogger().addHandler(self._errors)

    def running(self) -> None:
        self.manager = manager = ctx.master.addons
        self._shadows = {"handle_lifecycle": self.handle_lifecycle,
                         "register": self._dropping_table(manager.register),
                         "remove": self._dropping_table(manager.remove)}
        vars(manager).update(self._shadows)  # each shadows the class's method, on this manager only
        self._left_out = left_out(self.manager.chain, ctx.options)
        logging.getLogger().removeHandler(self._errors)
        if not self._errors.seen:
                log.info("softprobe: mitmproxy addons out of the flow dispatch, nothing to do with the options as "
                     f"they are: {', '.join(self._left_out) or 'none'}; each flow event goes only to the addons "
                     "with a handler for it")

    def configure(self, updated: set[str]) -> None:
        self._table = {}
        if self._left_out is not None and (now := left_out(self.manager.chain, ctx.options)) != self._left_out:
            back = [name for name in self._left_out if name not in now]
            log.info(f"softprobe: mitmproxy addons back in the flow dispatch: {', '.join(back) or 'none'}; "
                     f"out of it: {', '.join(now) or 'none'}")
            self._left_out = now

    def update(self, flows: Sequence[flow.Flow]) -> None:
        if not flows:  # a command changed an addon's state (server replay's flows)
            self._table = {}

    def done(self) -> None:
        logging.getLogger().removeHandler(self._errors)  # start-up failed before `running`
        if self.manager is not None:
            for name, method in self._shadows.items():
                if vars(self.manager).get(name) == method:
                    delattr(self.manager, name)
        self.manager = None

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        """`AddonManager.handle_lifecycle`: the event, then `update` when it is a flow's."""
        args = hook_args(event)
        await self._trigger(event.name, args)
        if isinstance(args[0], flow.Flow):
            await self._trigger("update", ([args[0]],))

    def _dropping_table(self, method: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`AddonManager.register` or `remove`: an addon added or removed anywhere in the tree (a
        script loaded, reloaded or unloaded) has the table, which holds the scripts' handlers,
        built anew for the next event."""
        def changed(addon: Any) -> Any:
            try:
                return method(addon)
            finally:
                self._table = {}
        return changed

    async def _trigger(self, name: str, args: Sequence[Any]) -> None:
        """`AddonManager.trigger_event` over the event's handlers: an error is logged by
        mitmproxy's own `safecall` and the event goes on to the next addon of the chain;
        `AddonHalt` stops it."""
        todo = self._table.get(name)
        if todo is None:
            manager = self.manager
            todo = self._table[name] = tuple(
                funcs for a in handlers(manager.chain, name, manager.master.options) if (funcs := _handlers_of(a, name)))
        for funcs in todo:
            try:
                for func in funcs:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except Exception:
                with addonmanager.safecall():
                    raise


def _handlers_of(addon: Any, name: str) -> tuple[Callable, ...]:
    """`hooks_of`; a handler that is not callable is logged, by mitmproxy's `safecall`, when the
    table is built (mitmproxy logs it at each event), and its addon's handlers are left out."""
    try:
        return tuple(hooks_of(addon, name, []))
    except exceptions.AddonManagerError:
        with addonmanager.safecall():
            raise
    return ()


_FIELDS: dict[type, tuple[str, ...]] = {}


def hook_args(event: hooks.Hook) -> list[Any]:
    """`Hook.args()`, with each hook class's field names read once (`dataclasses.fields` on every
    event cost about 2 us)."""
    names = _FIELDS.get(type(event))
    if names is None:
        names = _FIELDS[type(event)] = tuple(f.name for f in dataclasses.fields(event))
    return [getattr(event, n) for n in names]


def hooks_of(addon: Any, name: str, out: list[Callable]) -> list[Callable]:
    """`AddonManager._iter_hooks` without its generators: the `name` handlers of `addon` and of
    its sub-addons, depth first (collected before the first is called; flow hooks leave the
    tree as it is)."""
    func = getattr(addon, name, None)
    if func:
        if callable(func):
            out.append(func)
        elif not isinstance(func, types.ModuleType):  # a module imported under a hook's name is no handler
            raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")
    if hasattr(addon, "addons"):
        for sub in addon.addons:
            hooks_of(sub, name, out)
    return out
