"""Sampling: which exchanges are recorded when not all of them can be (production traffic).

Decided once per session and the same in every gateway of the mesh, as OpenTelemetry derives its
ratio sampler's decision from the trace id: a session is recorded whole or not at all, whichever
gateway sees which of its calls. The decision travels on in `traceparent`'s sampled flag, which a
downstream gateway (and the app's own tracing) follows (`parent_based`). Budgets cap what is
recorded per second whatever the rate says.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable

from softprobe_gateway.config.schema import SamplingConfig

SAMPLED_OUT, OVER_BUDGET = "sampled_out", "over_budget"  # skip reasons (metric labels)
_SCALE = float(1 << 64)


def session_fraction(session: str) -> float:
    """Where a session falls in [0, 1): the same in every process and on every machine."""
    digest = hashlib.blake2b(session.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


class TokenBucket:
    """`rate` units a second, at most a second's worth saved up; a rate of 0 admits everything."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.tokens, self.at = rate, clock()

    def take(self, amount: float) -> bool:
        if not self.rate:
            return True
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class Sampler:
    """The `sampling` config, compiled once per runtime."""

    def __init__(self, config: SamplingConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.parent_based = config.rate, config.parent_based
        self.rules = tuple((re.compile(r.host), re.compile(r.path), r.rate) for r in config.rules)
        self.exchanges = TokenBucket(config.max_exchanges_per_s, clock)
        self.bytes = TokenBucket(config.max_bytes_per_s, clock)
        self.everything = self.rate >= 1 and not self.rules

    def sampled(self, host: str, path: str, session: str, explicit: bool,
                parent_sampled: bool | None) -> bool:
        """Whether this request's session is recorded: always with a session header of its own;
        else as its parent's `traceparent` says (`parent_based`); else by the session's place
        against the rate of the first matching rule (`path` without its query), or `rate`."""
        if explicit or self.everything:
            return True
        if self.parent_based and parent_sampled is not None:
            return parent_sampled
        return session_fraction(session) < self._rate(host, path.split("?", 1)[0])

    def _rate(self, host: str, path: str) -> float:
        for host_pattern, path_pattern, rate in self.rules:
            if host_pattern.search(host) and path_pattern.search(path):
                return rate
        return self.rate

    def admit(self) -> bool:
        """One more exchange within `max_exchanges_per_s`."""
        return self.exchanges.take(1)

    def admit_bytes(self, size: int) -> bool:
        """An exchange of `size` bytes within `max_bytes_per_s` (judged once its answer is in)."""
        return self.bytes.take(size)
