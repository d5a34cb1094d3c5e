"""Sampling decisions as pure functions: per session, the same everywhere, budgets by the clock."""

from __future__ import annotations

import hashlib
import uuid

from softprobe_gateway.config.schema import SamplingConfig, SamplingRule
from softprobe_gateway.decisions.sampling import Sampler, TokenBucket, session_fraction


def sessions(n: int) -> list[str]:
    return [f"sp-session-{uuid.uuid4()}" for _ in range(n)]


def test_a_rate_records_that_fraction_of_sessions_and_every_sampler_agrees() -> None:
    config = SamplingConfig(rate=0.25)
    first, second = Sampler(config), Sampler(config)
    ids = sessions(8000)
    chosen = [s for s in ids if first.sampled("h", "/p", s, False, None)]
    assert 0.23 < len(chosen) / len(ids) < 0.27  # binomial: 3 sigma is 0.015
    assert chosen == [s for s in ids if second.sampled("other-host", "/q", s, False, None)]
    assert all(first.sampled("h", f"/call/{i}", s, False, None) for s in chosen[:50] for i in range(3))


def test_the_fraction_is_stable_across_processes() -> None:
    """A blake2b digest, not Python's salted hash(): every gateway of the mesh computes the same."""
    assert session_fraction("sp-session-0") == session_fraction("sp-session-0")
    digest = hashlib.blake2b(b"checkout-42", digest_size=8).digest()
    assert session_fraction("checkout-42") == int.from_bytes(digest, "big") / 2 ** 64


def test_a_session_header_of_its_own_is_always_recorded_and_parents_are_followed() -> None:
    sampler = Sampler(SamplingConfig(rate=0.0))
    assert sampler.sampled("h", "/", "test-1", True, False)  # explicit: a test opting in
    assert sampler.sampled("h", "/", "s", False, True)  # the parent's traceparent says 01
    assert not sampler.sampled("h", "/", "s", False, None)
    assert not Sampler(SamplingConfig(rate=1.0, rules=(SamplingRule(rate=0.5),))).sampled(
        "h", "/", "s", False, False)  # 00 followed
    ignoring = Sampler(SamplingConfig(rate=0.0, parent_based=False))
    assert not ignoring.sampled("h", "/", "s", False, True)


def test_by_default_everything_is_recorded_whatever_the_parent_says() -> None:
    """The defaults keep today's behaviour: an app tracing at 1% does not turn recording off."""
    assert Sampler(SamplingConfig()).sampled("h", "/", "s", False, False)


def test_the_first_matching_rule_gives_the_rate() -> None:
    sampler = Sampler(SamplingConfig(rate=0.0, rules=(
        SamplingRule(host=r"^pay\.", path=r"^/v1/charge$", rate=1.0), SamplingRule(path="^/health", rate=0.0),
        SamplingRule(path="", rate=1.0))))
    assert sampler.sampled("pay.example", "/v1/charge?x=1", "s", False, None)  # path without query
    assert not sampler.sampled("pay.example", "/healthz", "s", False, None)
    assert sampler.sampled("other", "/anything", "s", False, None)


def test_budgets_admit_a_seconds_worth_then_refill_with_time() -> None:
    now = [100.0]
    bucket = TokenBucket(5, clock=lambda: now[0])
    assert [bucket.take(1) for _ in range(7)] == [True] * 5 + [False] * 2
    now[0] += 0.4  # two more tokens
    assert [bucket.take(1) for _ in range(3)] == [True, True, False]
    now[0] += 60
    assert sum(bucket.take(1) for _ in range(10)) == 5  # at most a second's worth saved up
    assert all(TokenBucket(0).take(10**9) for _ in range(3))  # 0: no budget
