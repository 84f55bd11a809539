"""The token-bucket rate limiter."""

from __future__ import annotations

import pytest

from homeserver.core.clock import FakeClock
from homeserver.core.config import RateLimit, RateLimitsConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ratelimit import Action, RateLimiter


def limiter(
    clock: FakeClock, *, enabled: bool = True, per_second: float = 1.0, burst: int = 3
) -> RateLimiter:
    config = RateLimitsConfig(enabled=enabled, login=RateLimit(per_second=per_second, burst=burst))
    return RateLimiter(config, clock)


async def refused(rl: RateLimiter, key: str = "ip:1.2.3.4") -> int:
    with pytest.raises(MatrixError) as e:
        await rl.check(Action.LOGIN, key)
    assert e.value.code == Codes.LIMIT_EXCEEDED and e.value.status == 429
    retry: int = e.value.extra["retry_after_ms"]
    return retry


async def test_burst_then_refused() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    for _ in range(3):
        await rl.check(Action.LOGIN, "ip:1.2.3.4")
    assert await refused(rl) == 1000


async def test_refills_over_time() -> None:
    clock = FakeClock()
    rl = limiter(clock, per_second=2, burst=2)
    await rl.check(Action.LOGIN, "k")
    await rl.check(Action.LOGIN, "k")
    clock.advance(250)
    assert await refused(rl, "k") == 250  # half a token back, half to go
    clock.advance(250)
    await rl.check(Action.LOGIN, "k")
    clock.advance(10_000)  # never more than the burst
    await rl.check(Action.LOGIN, "k")
    await rl.check(Action.LOGIN, "k")
    assert await refused(rl, "k") == 500


async def test_keys_and_actions_are_independent() -> None:
    clock = FakeClock()
    rl = limiter(clock, burst=1)
    await rl.check(Action.LOGIN, "a")
    await rl.check(Action.LOGIN, "b")
    await refused(rl, "a")
    await rl.check(Action.REGISTRATION, "a")  # its own bucket, its own limit


async def test_disabled_and_exempt() -> None:
    clock = FakeClock()
    off = limiter(clock, enabled=False, burst=1)
    for _ in range(10):
        await off.check(Action.LOGIN, "k")
    on = limiter(clock, burst=1)
    for _ in range(10):
        await on.check(Action.LOGIN, "k", exempt=True)
    await on.check(Action.LOGIN, "k")
    await refused(on, "k")


async def test_forgotten_bucket_is_full() -> None:
    clock = FakeClock()
    rl = limiter(clock, per_second=1, burst=2)
    await rl.check(Action.LOGIN, "k")
    await rl.check(Action.LOGIN, "k")
    clock.advance(60_000)
    await rl.check(Action.LOGIN, "k")
    await rl.check(Action.LOGIN, "k")
    await refused(rl, "k")


def test_every_action_has_a_config_section() -> None:
    rl = RateLimiter(RateLimitsConfig(), FakeClock())
    for action in Action:
        assert rl.limit_of(action).burst >= 1
