"""The gateway's lifecycle addon: its options, the config (checked at start-up, reloaded when
the file changes or an option is set), the runtime built from it, and the admin endpoint.

At start-up `configure` only checks the config (a bad one stops mitmproxy with one line);
`running`, once the listeners are bound, builds the runtime from that same load and starts what
has side effects (the admin port, the export worker). A later change builds a new runtime and
swaps it in whole; the replaced one retires when its last flow ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from mitmproxy import ctx, exceptions

from softprobe_gateway.config.loader import CONFIG_ENV, ConfigFile
from softprobe_gateway.config.schema import Config, ConfigError
from softprobe_gateway.decisions.interception import upstream_trust
from softprobe_gateway.metrics import Metrics
from softprobe_gateway.proxy import backend_check, drain, options
from softprobe_gateway.proxy.admin import AdminServer
from softprobe_gateway.proxy.routing import listen_addresses
from softprobe_gateway.proxy.runtime import Runtime

log = logging.getLogger(__name__)
RELOAD_POLL_S = 1.0
OPTIONS = options.NAMES | {"softprobe_config"}
# A replaced runtime stays open until the flows that started with it end, at most this long.
RETIRE_GRACE_S = 30.0
RETIRE_WAIT_S = 30.0  # done() waits at most this long for replaced runtimes to flush


class Lifecycle:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.runtime: Runtime | None = None  # the current one: None until running (or rejected)
        self.config_file: ConfigFile | None = None  # None: the config was rejected at start-up
        self._checked: Config | None = None  # loaded by configure at start-up, used by running
        self.admin: AdminServer | None = None
        self._watcher: asyncio.Task | None = None
        self._retiring: dict[asyncio.Task, Runtime] = {}  # replaced runtimes finishing their flows
        self.draining = False  # a stop began: HTTP/1 clients are asked to close (`proxy.drain`)
        self.backend_state = backend_check.UNCHECKED  # the current runtime's HTTP backend, as last seen

    def load(self, loader) -> None:
        loader.add_option(
            "softprobe_config", str, "",
            f"Path of the Softprobe gateway YAML config (default: ${CONFIG_ENV}, else built-in "
            "defaults). The file is watched: a valid edit is applied live, an invalid one rejected.",
        )
        options.declare(loader)

    def configure(self, updated: set[str]) -> None:
        """Before `running`, only check the config: a bad one stops start-up with one line. Once
        running, a change of any softprobe option builds a new runtime, like a config reload."""
        if not updated & OPTIONS:
            return
        path = ctx.options.softprobe_config or os.environ.get(CONFIG_ENV, "")
        try:
            if self.runtime is None:
                options.refuse_unknown(ctx.options.deferred, OPTIONS)
            config_file = ConfigFile(path or None, options.overrides(ctx.options))
            if self.runtime is None:
                self._checked, self.config_file = config_file.load(), config_file
                return
            if (config_file.path, config_file.overrides) == (self.config_file.path, self.config_file.overrides):
                return  # e.g. mitmproxy rolling back a rejected change: nothing changed
            runtime = self._start(config_file.load())
        except (ConfigError, exceptions.OptionsError) as e:
            if self.runtime is not None:
                raise exceptions.OptionsError(str(e)) from None
            # At start-up, one error line is enough: mitmproxy's start-up check exits non-zero on it.
            self.config_file = None
            log.error(str(e))
            return
        self.config_file = config_file
        self._install(runtime)

    def running(self) -> None:
        if self.config_file is None:  # the config was rejected: mitmproxy is exiting
            return
        try:
            runtime = self._start(self._checked)
        except (ConfigError, exceptions.OptionsError) as e:
            log.error(str(e))
            return
        self._checked = None
        self._install(runtime)
        if self.config_file.path and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _start(self, config: Config) -> Runtime:
        """The admin port first: when it is taken, no worker process was started for nothing."""
        self._serve_admin(config.admin_listen)
        return self._build(config)

    def _build(self, config: Config) -> Runtime:
        listen = listen_addresses(ctx.options.mode, ctx.options.listen_host, ctx.options.listen_port)
        trust = upstream_trust(config.tls.upstream_ca, ctx.options.ssl_verify_upstream_trusted_ca)
        return Runtime(config, self.metrics, listen, trust)

    def _install(self, runtime: Runtime) -> None:
        """Swap the whole runtime for new flows; the old one retires in the background."""
        old, self.runtime = self.runtime, runtime
        runtime.exporter.publish()
        self._set_mitmproxy_options(runtime)
        self.metrics.config_loaded(self.config_file.source, self.config_file.digest)
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.retire(RETIRE_GRACE_S))
            self._retiring[task] = old
            task.add_done_callback(self._retiring.pop)
        described = runtime.describe(self.config_file.source, "reloaded" if old else "loaded")
        if self.config_file.overrides:
            described += f"; options: {options.describe(self.config_file.overrides)}"
        log.info(described)
        self._check_backend(runtime)

    def _check_backend(self, runtime: Runtime) -> None:
        """An HTTP backend that is down or mistyped is said at once (the store and a file are
        opened by the worker at start-up, where an error already stops it)."""
        self.backend_state = backend_check.UNCHECKED
        if runtime.config.backend_kind != "http":
            return

        def report(state: str) -> None:
            if self.runtime is runtime:
                self.backend_state = state

        backend_check.check_in_background(runtime.config.sp_backend_url, runtime.config.export.timeout_s, report)

    @staticmethod
    def _set_mitmproxy_options(runtime: Runtime) -> None:
        """The options of mitmproxy's own addons this gateway needs, set here and nowhere else
        (mitmweb's options view and `:set` show them): `ssl_verify_upstream_trusted_ca` to the
        CAs of `tls.upstream_ca` (with mitmproxy's own, see `interception.upstream_trust`), and
        `connection_strategy=lazy` once lookups or mocks may answer: a hit must not open an
        upstream connection."""
        changes = {}
        if ctx.options.ssl_verify_upstream_trusted_ca != runtime.upstream_trust:
            changes["ssl_verify_upstream_trusted_ca"] = runtime.upstream_trust
        if runtime.answers_locally and ctx.options.connection_strategy != "lazy":
            changes["connection_strategy"] = "lazy"
        if changes:
            ctx.options.update(**changes)

    def _serve_admin(self, listen: str) -> None:
        current = f"{self.admin.address[0]}:{self.admin.address[1]}" if self.admin else ""
        if self.admin and listen != current:
            self.admin.close()
            self.admin = None
        if listen and self.admin is None:
            try:
                self.admin = AdminServer(listen, self.metrics, self.ready, self.export_state)
            except OSError as e:
                if current:  # a refused move at runtime is rolled back: keep serving where it was
                    with contextlib.suppress(OSError):
                        self.admin = AdminServer(current, self.metrics, self.ready, self.export_state)
                raise exceptions.OptionsError(
                    f"softprobe: admin_listen: cannot listen on {listen}: {e.strerror} (another "
                    "gateway running? choose another address with --set softprobe_admin=HOST:PORT)"
                ) from None

    def ready(self) -> bool:
        """Started, not stopping, and an export worker runs (not while a dead one is being restarted)."""
        return self.runtime is not None and self.runtime.exporter.running and not self.draining

    def export_state(self) -> str:
        """The export path, for `/readyz`: the worker, and where exports go (for an HTTP backend,
        whether it could be reached when the config was loaded)."""
        runtime = self.runtime
        if runtime is None:
            return "export: not started"
        worker = "running" if runtime.exporter.running else "not running (being restarted)"
        backend = runtime.backend.describe()
        if runtime.config.backend_kind == "http":
            state = self.backend_state
            backend += f": {state}" + ("" if state == backend_check.UNCHECKED else " when the config was loaded")
        return f"export worker {worker}; exporting to {backend}"

    async def _watch(self) -> None:
        """Apply edits of the config file (a ConfigMap update swaps a symlink) without a restart."""
        while True:
            await asyncio.sleep(RELOAD_POLL_S)
            config_file = self.config_file
            if not await asyncio.to_thread(config_file.changed):
                continue
            try:
                fresh = ConfigFile(config_file.path, config_file.overrides)
                runtime = await asyncio.to_thread(lambda: self._build(fresh.load()))
            except ConfigError as e:
                self.metrics.config_rejected(str(e))
                log.error(f"softprobe: config reload rejected, the previous config stays in force: {e}")
                continue
            if runtime.config.admin_listen != self.runtime.config.admin_listen:
                log.warning("softprobe: admin_listen changes take effect on restart")
            self.config_file = fresh
            self._install(runtime)

    async def done(self) -> None:
        """The stop drains (`proxy.drain`): no new connection, the flows in flight end within
        `export.drain_timeout_s` and are queued, then the queue is flushed within
        `export.shutdown_timeout_s`; the last line says what was exported and what was lost, why."""
        if self._watcher is not None:
            self._watcher.cancel()
        started = time.monotonic()
        if self.runtime is not None:
            self.draining = True
            await drain.stop_listening()
            runtimes = lambda: [self.runtime, *self._retiring.values()]
            left = await drain.wait_drained(lambda: sum(rt.in_flight for rt in runtimes()),
                                            self.runtime.config.export.drain_timeout_s)
            if left:
                log.warning(f"softprobe: stopping with {left} flow(s) still in flight after "
                            f"export.drain_timeout_s ({self.runtime.config.export.drain_timeout_s:g} s)")
        drained = time.monotonic()
        for old in self._retiring.values():
            old.stop_waiting()  # no flow will end any more
        if self.runtime is not None:
            await self.runtime.aclose()
        if self._retiring:  # replaced runtimes still flushing: each is bounded by its own timeout
            await asyncio.wait(set(self._retiring), timeout=RETIRE_WAIT_S)
        if self.runtime is not None:
            log.info(f"softprobe: stopped in {time.monotonic() - started:.1f} s (drain {drained - started:.1f} s, "
                     f"flush {time.monotonic() - drained:.1f} s); {self.metrics.export_summary()}")
        if self.admin is not None:
            self.admin.close()
