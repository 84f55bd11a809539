"""One bus suite, two backends: in memory (one process) and Redis (127.0.0.1:6379, a channel
per test). Two workers are two notifiers; with Redis each has its own bus and connection.
Redis also loses its connection here (CLIENT KILL, and a Redis of the test's own that stops
and starts again): a lost wake-up costs latency, never an event, as the worker resyncs."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from homeserver.core.streams import Stream
from homeserver.wakeups.bus import Bus, InMemoryBus, Wakeup
from homeserver.wakeups.notifier import Notifier
from homeserver.wakeups.redis_bus import RedisBus
from tests.push_servers import free_port
from tests.redis_process import start_redis

REDIS_URL = "redis://127.0.0.1:6379/0"
WAIT_S = 5.0

Pair = Callable[[], Awaitable[tuple[Bus, Bus]]]


async def _subscribed(*buses: RedisBus) -> None:
    async with asyncio.timeout(WAIT_S):
        while not all(b.subscribed for b in buses):
            await asyncio.sleep(0.01)


@pytest.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """Makes the buses of two workers on one deployment."""
    channel = f"test:{secrets.token_hex(6)}:wakeups"
    tasks: list[asyncio.Task[None]] = []
    made: list[RedisBus] = []

    async def make() -> tuple[Bus, Bus]:
        if request.param == "memory":
            bus = InMemoryBus()  # one process: both notifiers on the one bus
            return bus, bus
        a, b = RedisBus(REDIS_URL, channel), RedisBus(REDIS_URL, channel)
        made.extend((a, b))
        tasks.extend(asyncio.create_task(x.run()) for x in (a, b))
        await _subscribed(a, b)
        return a, b

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for bus in made:
        await bus.close()


async def _received(bus: Bus) -> list[Wakeup]:
    got: list[Wakeup] = []

    async def keep(wakeup: Wakeup) -> None:
        got.append(wakeup)

    bus.subscribe(keep)
    return got


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_wakeup_reaches_every_worker_once_with_its_fields(pair: Pair) -> None:
    a, b = await pair()
    at_a, at_b = await _received(a), await _received(b)
    sent = Wakeup(Stream.EVENTS, 41, "!room:test", ("@u:test", "@v:test"), upto=40)
    await a.publish(sent)
    expected = [sent]
    await _until(lambda: at_b == expected)
    assert at_a == expected  # its own, once (delivered locally, not again through Redis)
    await asyncio.sleep(0.05)
    assert at_b == expected


async def test_a_long_poll_on_one_worker_is_woken_by_a_send_on_the_other(pair: Pair) -> None:
    a, b = await pair()
    sender, receiver = Notifier(a), Notifier(b)
    receiver.learn(dict.fromkeys(Stream, 0))
    listener = receiver.listen("@bob:test", ["!room:test"])
    waiting = asyncio.create_task(listener.wait(WAIT_S))
    await sender.notify(Stream.EVENTS, 1, room_id="!room:test")
    assert await waiting is True
    other = receiver.listen("@carol:test", ["!elsewhere:test"])
    await sender.notify(Stream.EVENTS, 2, room_id="!room:test")
    assert await other.wait(0.2) is False  # not her room
    await _until(lambda: (receiver.committed() or {}).get(Stream.EVENTS) == 2)


async def test_a_wakeup_above_the_committed_position_waits_for_it(pair: Pair) -> None:
    """Several writers: position 5 committed while 4 is still in flight elsewhere. The
    wake-up for 5 says committed up to 3; the listener wakes only once 5 is covered."""
    a, b = await pair()
    upto = {Stream.EVENTS: 3}
    sender = Notifier(a, persisted=lambda s: upto.get(s))
    receiver = Notifier(b)
    receiver.learn(dict.fromkeys(Stream, 0))
    listener = receiver.listen("@bob:test", ["!room:test"])
    await sender.notify(Stream.EVENTS, 5, room_id="!room:test")
    assert await listener.wait(0.2) is False
    assert (receiver.committed() or {})[Stream.EVENTS] == 3
    # Position 4 commits, with no wake-up of its own (rolled back, or for no one here): the
    # writer announces the position it found, and the held wake-up goes out.
    upto[Stream.EVENTS] = 5
    sender.advanced(Stream.EVENTS, 5)
    assert await listener.wait(WAIT_S) is True
    assert (receiver.committed() or {})[Stream.EVENTS] == 5


async def _resynced(notifier_bus: RedisBus, before: int) -> None:
    await _until(lambda: notifier_bus.resyncs > before and notifier_bus.subscribed)


@pytest.mark.timeout(60)
async def test_a_worker_cut_off_from_redis_resyncs_from_the_database() -> None:
    channel = f"test:{secrets.token_hex(6)}:wakeups"
    a, b = RedisBus(REDIS_URL, channel), RedisBus(REDIS_URL, channel)
    tasks = [asyncio.create_task(x.run()) for x in (a, b)]
    try:
        await _subscribed(a, b)
        database = dict.fromkeys(Stream, 0)  # what the database says is committed

        async def positions() -> dict[Stream, int]:
            return dict(database)

        receiver = Notifier(b, positions)
        await receiver.resync()
        listener = receiver.listen("@bob:test", ["!room:test"])
        before = b.resyncs
        # Kill b's connections (only b's: the Redis is shared): Redis drops them.
        admin = Redis.from_url(REDIS_URL)
        try:
            mine = [c["id"] for c in await admin.client_list() if c["name"] == b.client_name]
            assert mine
            for client_id in mine:
                await admin.execute_command("CLIENT", "KILL", "ID", client_id)
        finally:
            await admin.aclose()
        # Meanwhile an event commits and its wake-up is lost to b.
        database[Stream.EVENTS] = 9
        # b resubscribes, reads the positions again and wakes its listeners: the long-poll
        # computes from its token and finds the event.
        await _resynced(b, before)
        assert await listener.wait(WAIT_S) is True
        assert (receiver.committed() or {})[Stream.EVENTS] == 9
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a.close()
        await b.close()


async def _ping(url: str) -> None:
    client = Redis.from_url(url)
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                try:
                    await client.ping()
                    return
                except OSError:
                    await asyncio.sleep(0.05)
                except Exception:
                    await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_redis_stopped_and_started_again(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = start_redis(port, tmp_path)
    try:
        await _ping(url)
        a, b = RedisBus(url, "deploy:wakeups"), RedisBus(url, "deploy:wakeups")
        tasks = [asyncio.create_task(x.run()) for x in (a, b)]
        try:
            await _subscribed(a, b)
            assert await a.ping()
            at_b = await _received(b)
            proc.terminate()
            proc.wait(10)
            await _until(lambda: not b.subscribed)
            assert not await a.ping()
            # Publishing with Redis down neither raises nor loses the local delivery.
            at_a = await _received(a)
            await a.publish(Wakeup(Stream.EVENTS, 3, "!r:test"))
            assert at_a == [Wakeup(Stream.EVENTS, 3, "!r:test")] and a.publish_failures >= 1
            before = b.resyncs
            proc = start_redis(port, tmp_path)
            await _resynced(b, before)
            await _subscribed(a, b)
            await a.publish(Wakeup(Stream.EVENTS, 4, "!r:test"))
            await _until(lambda: Wakeup(Stream.EVENTS, 4, "!r:test") in at_b)
            assert Wakeup(Stream.EVENTS, 3, "!r:test") not in at_b  # lost: resynced instead
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await a.close()
            await b.close()
    finally:
        proc.terminate()
        proc.wait(10)


async def test_an_unreadable_message_is_skipped() -> None:
    """Only Redis carries messages from outside the process."""
    channel = f"test:{secrets.token_hex(6)}:wakeups"
    a, b = RedisBus(REDIS_URL, channel), RedisBus(REDIS_URL, channel)
    tasks = [asyncio.create_task(x.run()) for x in (a, b)]
    try:
        await _subscribed(a, b)
        at_b = await _received(b)
        admin = Redis.from_url(REDIS_URL)
        try:
            for junk in (b"not json", b'{"s": "nope", "p": 1}', b'{"s": "events", "p": "1"}'):
                await admin.publish(channel, junk)
        finally:
            await admin.aclose()
        await a.publish(Wakeup(Stream.RECEIPTS, 2, "!r:test"))
        await _until(lambda: len(at_b) == 1)
        assert at_b == [Wakeup(Stream.RECEIPTS, 2, "!r:test")]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a.close()
        await b.close()
