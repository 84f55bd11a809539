"""Rate limits shared through Redis (issue 21): N workers give one allowance, not N; with
Redis out of reach each worker limits alone (fail open, logged)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from homeserver.core import ratelimit
from homeserver.core.clock import FakeClock
from homeserver.core.config import HomeserverConfig, RateLimit, RateLimitsConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ratelimit import Action, RateLimiter
from tests.conftest import make_config
from tests.helpers import serve
from tests.push_servers import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    """Buckets of this test alone (the Redis server is shared)."""
    return f"test-{secrets.token_hex(6)}:"


def _limiter(clock: FakeClock, redis: Redis, prefix: str, burst: int = 3) -> RateLimiter:
    config = RateLimitsConfig(login=RateLimit(per_second=1, burst=burst))
    return RateLimiter(config, clock, redis, prefix=prefix)


async def _refused(rl: RateLimiter, key: str = "k") -> int:
    with pytest.raises(MatrixError) as e:
        await rl.check(Action.LOGIN, key)
    assert e.value.code == Codes.LIMIT_EXCEEDED and e.value.status == 429
    retry: int = e.value.extra["retry_after_ms"]
    return retry


async def test_two_workers_share_one_allowance(redis: Redis, prefix: str) -> None:
    clock = FakeClock()
    a, b = _limiter(clock, redis, prefix), _limiter(clock, redis, prefix)
    await a.check(Action.LOGIN, "k")
    await b.check(Action.LOGIN, "k")
    await a.check(Action.LOGIN, "k")
    assert await _refused(b) == 1000  # three for both, not three each
    assert await _refused(a) == 1000
    await b.check(Action.LOGIN, "other")  # another key, another bucket
    clock.advance(500)
    assert await _refused(a) == 500  # half a token back
    clock.advance(500)
    await b.check(Action.LOGIN, "k")
    assert await _refused(a) == 1000
    clock.advance(60_000)  # never more than the burst
    for rl in (a, b, a):
        await rl.check(Action.LOGIN, "k")
    await _refused(b)
    assert await redis.exists(f"{prefix}login:k")
    ttl = await redis.pttl(f"{prefix}login:k")
    assert 0 < ttl <= 4000  # a bucket lives as long as it takes to refill, then goes


async def test_overrides_have_their_own_shared_buckets(redis: Redis, prefix: str) -> None:
    clock = FakeClock()
    a, b = _limiter(clock, redis, prefix, burst=1), _limiter(clock, redis, prefix, burst=1)
    for rl in (a, b):
        rl.set_overrides(Action.LOGIN, {"vip": RateLimit(per_second=1, burst=2), "free": None})
    await a.check(Action.LOGIN, "vip")
    await b.check(Action.LOGIN, "vip")
    await _refused(a, "vip")
    for _ in range(5):
        await b.check(Action.LOGIN, "free")


async def test_unreachable_redis_fails_open_per_worker(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    nowhere = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        a = _limiter(clock, nowhere, prefix, burst=2)
        with caplog.at_level(logging.WARNING, logger="homeserver.core.ratelimit"):
            await a.check(Action.LOGIN, "k")  # not refused: Redis is down
            await a.check(Action.LOGIN, "k")
            assert await _refused(a) == 1000  # the worker's own bucket limits
        warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert len(warnings) == 1  # once, not per request
    finally:
        await nowhere.aclose()


async def test_back_on_redis_once_it_answers(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "REDIS_RETRY_S", 0.0)
    clock = FakeClock()
    a = _limiter(clock, redis, prefix, burst=2)
    shared = a._shared
    assert shared is not None
    shared._down_until = float("inf")  # as after a failure
    await a.check(Action.LOGIN, "k")  # the worker's bucket
    assert not await redis.exists(f"{prefix}login:k")
    shared._down_until = 0.0  # the retry time is up
    await a.check(Action.LOGIN, "k")
    assert await redis.exists(f"{prefix}login:k")


async def test_two_homeservers_share_the_registration_limit(
    tmp_path: Path, db_url: str, prefix: str
) -> None:
    """Two Homeservers (workers) with one Redis: registrations from one address are
    limited across both."""
    server_name = f"t{secrets.token_hex(4)}"

    def config(name: str) -> HomeserverConfig:
        return make_config(
            tmp_path / name,
            db_url,
            server_name=server_name,
            worker={"name": name},
            redis={"url": REDIS_URL},
            rate_limits={"registration": {"per_second": 0.001, "burst": 2}},
        )

    body = {"password": "a long password", "auth": {"type": "m.login.dummy"}}
    async with serve(config("a")) as (_, a), serve(config("b")) as (_, b):
        r = await a.post("/_matrix/client/v3/register", json={**body, "username": "u1"})
        assert r.status_code == 200, r.text
        r = await b.post("/_matrix/client/v3/register", json={**body, "username": "u2"})
        assert r.status_code == 200, r.text
        for client, name in ((a, "u3"), (b, "u4")):
            r = await client.post("/_matrix/client/v3/register", json={**body, "username": name})
            assert r.status_code == 429, r.text
            assert r.json()["errcode"] == "M_LIMIT_EXCEEDED"
            assert r.json()["retry_after_ms"] > 0
