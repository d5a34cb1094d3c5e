"""mitmproxy options for the settings people change from the command line.

Each option overrides one YAML key (`mitmdump --set softprobe_lookups=on`, or mitmweb's options
editor at runtime); left unset (None) the config file's value, else the built-in default, applies.
The public key is deliberately not an option: option values are visible in process lists and in
mitmweb; it comes from $SOFTPROBE_PUBLIC_KEY (or the file) only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Optional

from mitmproxy import exceptions

from softprobe_gateway.config.loader import check_override
from softprobe_gateway.config.schema import PUBLIC_KEY_ENV, ConfigError
from softprobe_gateway.config.validate import closest, parse_size

ON_OFF = ("on", "off")


def _on_off(value: str) -> bool:
    if value not in ON_OFF:
        raise ValueError(f"expected on or off, got {value!r}")
    return value == "on"


def _fraction(value: str) -> float:
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0 <= fraction <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return fraction


@dataclass(frozen=True)
class Option:
    name: str
    key: str  # the YAML key it overrides, dotted
    help: str
    convert: Callable[[str], Any] = str
    choices: tuple[str, ...] = ()


OPTIONS = (
    Option("softprobe_backend_url", "sp_backend_url",
           "Where exchanges go: sqlite:PATH (embedded store), http(s)://HOST[:PORT][/PREFIX] "
           "(a Softprobe backend) or file:PATH (OTLP JSON lines). The public key is not an "
           f"option (it would show in process lists): set ${PUBLIC_KEY_ENV}."),
    Option("softprobe_service_name", "service_name",
           "Service name on every span (default-service: the x-sp-service-name header, else the "
           "calling mesh workload)."),
    Option("softprobe_direction", "traffic_direction",
           "Traffic direction: server or inbound, client or outbound, auto; empty: inbound on a "
           "reverse listener, else outbound."),
    Option("softprobe_lookups", "enable_inject",
           "Agent lookups (replay): on asks the backend for a recorded answer before going upstream.",
           _on_off, ON_OFF),
    Option("softprobe_strict", "lookup.on_miss",
           "Strict replay: on answers a lookup miss with a 404 from the gateway (a failed lookup "
           "503), never the upstream.",
           lambda v: "reject" if _on_off(v) else "forward", ON_OFF),
    Option("softprobe_store", "store.path", "The embedded store's SQLite file."),
    Option("softprobe_admin", "admin_listen",
           "HOST:PORT of /healthz, /readyz and /metrics; empty: off."),
    Option("softprobe_max_body", "capture.max_body_bytes",
           "Per-body capture cap (e.g. 64k, 1m); longer bodies are cut and marked truncated.",
           parse_size),
    Option("softprobe_sampling_rate", "sampling.rate",
           "The fraction of sessions recorded, 0 to 1 (1: all); decided per session, the same in "
           "every gateway. A request with a session header of its own is always recorded.",
           _fraction),
)
NAMES = frozenset(o.name for o in OPTIONS)


def declare(loader: Any) -> None:
    for o in OPTIONS:
        help = f"{o.help} Overrides the YAML key '{o.key}'; unset: the config file's value."
        loader.add_option(o.name, Optional[str], None, help, list(o.choices) or None)


def overrides(options: Any) -> dict[str, Any]:
    """The options that are set, as {YAML key: value}, each checked on its own so that an
    OptionsError names the option, not the key."""
    out: dict[str, Any] = {}
    for o in OPTIONS:
        raw = getattr(options, o.name)
        if raw is None:
            continue
        try:
            value = o.convert(raw.strip())
            check_override(o.key, value)
        except (ValueError, ConfigError) as e:
            raise exceptions.OptionsError(f"{o.name}: {e}") from None
        out[o.key] = value
    return out


def refuse_unknown(deferred: Iterable[str], known: Collection[str]) -> None:
    """An OptionsError for a `softprobe_*` option that no addon declares, naming the closest one:
    mitmproxy keeps an unknown `--set` aside in silence (for an addon that might declare it
    later), so `softprobe_lookup=on` would start with lookups off."""
    for name in sorted(n for n in deferred if n.startswith("softprobe")):
        meant = closest(name, known)
        hint = f"did you mean {meant}?" if meant else f"the options are {', '.join(sorted(known))}"
        raise exceptions.OptionsError(f"{name}: no such option ({hint})")


def describe(values: dict[str, Any]) -> str:
    """`key=value, ...` for the log line of a loaded config."""
    return ", ".join(f"{k}={v!r}" for k, v in values.items())
