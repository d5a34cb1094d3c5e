"""How export retries are paced and given up (a pure decision), and how losses are told: the
rate-limited log adds up what it holds back, in spans, and tells it; the lookup breaker's
opening and closing are said once each and shown as a gauge."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest
from softprobe_gateway.backends.contract import LookupFailure
from softprobe_gateway.config.schema import LookupConfig
from softprobe_gateway.metrics import Metrics, RateLimitedLog
from softprobe_gateway.proxy.lookup import Lookup
from softprobe_gateway.worker.process import RETRY_BACKOFF_S, retry_pause

from testkit.support import wait_for

AGE = 300.0


@pytest.mark.parametrize("attempt, jitter, pause", [
    (0, 0.0, 0.05), (0, 0.999999, 0.1), (3, 0.0, 0.4), (10, 0.0, 2.5), (10, 0.999999, 5.0), (10_000, 0.5, 3.75),
])
def test_backoff_doubles_with_jitter_up_to_the_longest_pause(attempt, jitter, pause):
    assert retry_pause(0.0, attempt, 1.0, AGE, math.inf, jitter) == pytest.approx(pause, rel=1e-5)


def test_a_retry_after_is_a_floor_and_the_age_and_the_stop_are_ceilings():
    assert retry_pause(12.0, 0, 0.0, AGE, math.inf, 0.0) == 12.0
    assert retry_pause(12.0, 0, AGE - 2, AGE, math.inf, 0.0) == 2.0    # not past max_retry_age_s
    assert retry_pause(12.0, 0, 0.0, AGE, 0.5, 0.0) == 0.5             # not past the stop's deadline


@pytest.mark.parametrize("retry_after, age, left", [(None, 0.0, math.inf), (0.0, AGE, math.inf), (0.0, 1.0, 0.0)])
def test_a_batch_is_given_up_when_not_retryable_too_old_or_out_of_time(retry_after, age, left):
    assert retry_pause(retry_after, 0, age, AGE, left, 0.5) is None


def test_an_outage_of_ten_seconds_is_retried_across_and_reached_within_the_longest_pause():
    waited, attempt = 0.0, 0
    while waited < 10.0:
        waited += retry_pause(0.0, attempt, waited, AGE, math.inf, 0.999999)
        attempt += 1
    assert waited < 10.0 + RETRY_BACKOFF_S[1]


def test_the_rate_limited_log_tells_what_it_swallowed_in_items(caplog):
    losses = RateLimitedLog(logging.getLogger("t"), "span(s) dropped", interval_s=0.2)
    with caplog.at_level(logging.WARNING):
        losses.warning("queue_full", "softprobe: dropped 1 span(s): full", 1)
        losses.warning("queue_full", "softprobe: dropped 64 span(s): full", 64)
        losses.warning("send_failed", "softprobe: dropped 512 span(s): 500", 512)
        losses.warning("send_failed", "softprobe: dropped 512 span(s): 400", 512)
        losses.warning("send_failed", "softprobe: dropped 3 span(s): 400", 3)
        assert len(caplog.messages) == 2
        wait_for(lambda: len(caplog.messages) >= 3, 2)  # the interval's end tells a summary
        losses.flush()                                  # the exit tells the rest
    told = caplog.messages[2:]
    assert any(m.startswith("softprobe: 64 more span(s) dropped (queue_full) in 1 event(s)") for m in told)
    assert any(m.startswith("softprobe: 515 more span(s) dropped (send_failed) in 2 event(s)")
               and m.endswith("the last: dropped 3 span(s): 400") for m in told)
    losses.flush()
    assert len(caplog.messages) == 4  # told once


def test_the_lookup_breaker_opening_and_closing_are_said_once_each_and_gauged(caplog):
    metrics, failing = Metrics(), [True]

    async def transport(request):
        if failing[0]:
            raise LookupFailure("connect_error", "refused")
        return None

    lookup = Lookup(LookupConfig(breaker_failures=3, breaker_cooldown_s=0), transport, metrics)
    gauge = lambda: metrics.registry.get_sample_value("softprobe_lookup_breaker_open")

    async def run(n: int) -> None:
        for _ in range(n):
            await lookup(None)

    with caplog.at_level(logging.INFO):
        asyncio.run(run(10))          # opens at the third failure; every probe fails again
        assert gauge() == 1
        failing[0] = False
        asyncio.run(run(3))
        assert gauge() == 0
    opened = [m for m in caplog.messages if "circuit breaker opened after 3 failures" in m]
    closed = [m for m in caplog.messages if "circuit breaker closed" in m]
    assert len(opened) == 1 and len(closed) == 1
