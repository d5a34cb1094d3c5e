"""The messages between the proxy process and its export worker (pickled over a socket pair).

Plain dataclasses, so both sides name every field; the proxy sends `Start`, then `Batch`es and
finally `Stop`; the worker answers `Ready` (or `StartFailed`), then one `Report` per batch (and
`Retrying` when a send fails and is retried).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from softprobe_gateway.capture.exchange import Exchange
from softprobe_gateway.config.schema import Config
from softprobe_gateway.store.model import MissedLookup

MAX_IN_FLIGHT = 4  # batches per worker handed over and not yet reported on, so it never idles
# Meant for the gateway: blocked while the worker starts, then ignored by it (its parent stops it).
GATEWAY_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


@dataclass(frozen=True, slots=True)
class Start:
    """The first message: the config the worker opens its sink and encoder with, and the
    shared memory large bodies come through (`handoff`)."""

    config: Config
    ring: Ring


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker's sink is open."""


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The sink could not be opened: one line naming the config key."""

    error: str


@dataclass(frozen=True, slots=True)
class SharedBody:
    """A body that travels in the shared ring: whose (`exchanges[exchange]`, `request` or
    `response`), where and how long. Its message's body is None until the worker puts it back."""

    exchange: int
    side: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Ring:
    """How the worker maps the ring: the inherited descriptor and the size."""

    fd: int
    size: int


@dataclass(slots=True)
class Batch:
    """Exchanges to encode into one OTLP request, cut by the queue. `misses` are lookups the
    embedded store did not answer, diagnosed and written by the worker (the store's one writer).
    `deadline` (wall clock) is set once the gateway is stopping: no retry starts after it."""

    seq: int
    exchanges: list[Exchange]
    misses: list[MissedLookup] = field(default_factory=list)
    deadline: float | None = None
    shared: list[SharedBody] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Stop:
    """Nothing more will come: finish the batches in hand by `deadline` (wall clock: the stop's
    deadline, which their retries must not outlast), close the sink and exit."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Drop:
    """Exchanges lost in the worker, why, and the last message about it."""

    reason: str
    count: int
    message: str


@dataclass(frozen=True, slots=True)
class Retrying:
    """A batch's send failed and will be retried (told on its first retry): the backend may be
    down, and batches wait for it."""

    error: str


@dataclass(slots=True)
class Report:
    """What became of one batch."""

    seq: int
    exported: int = 0  # spans the sink accepted
    sent_bytes: int = 0
    retries: int = 0
    failed: bool = False  # the request was given up
    truncated_requests: int = 0
    truncated_responses: int = 0
    drops: list[Drop] = field(default_factory=list)
