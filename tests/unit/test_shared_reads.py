"""SharedReads: one read per key for concurrent callers, kept after; failures not kept."""

from __future__ import annotations

import asyncio

import pytest

from homeserver.storage.shared_reads import RangeReads, SharedReads


async def test_concurrent_callers_share_one_read_and_later_ones_get_it_kept() -> None:
    shared: SharedReads[str, int] = SharedReads(maxsize=2)
    reads = 0
    gate = asyncio.Event()

    async def read() -> int:
        nonlocal reads
        reads += 1
        await gate.wait()
        return 42

    callers = [asyncio.create_task(shared.get("k", read)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*callers) == [42] * 5
    assert reads == 1
    assert await shared.get("k", read) == 42
    assert reads == 1
    # Bounded: the least recently used key goes.
    for key in ("a", "b"):
        await shared.get(key, read)
    assert await shared.get("k", read) == 42
    assert reads == 4


async def test_a_failed_read_is_not_kept_and_its_waiters_read_themselves() -> None:
    shared: SharedReads[str, int] = SharedReads(maxsize=8)
    gate = asyncio.Event()
    attempts = 0

    async def failing() -> int:
        nonlocal attempts
        attempts += 1
        await gate.wait()
        raise RuntimeError("connection lost")

    async def working() -> int:
        nonlocal attempts
        attempts += 1
        return 7

    first = asyncio.create_task(shared.get("k", failing))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(shared.get("k", working)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(RuntimeError):
        await first
    # One waiter read again; the others waited for it.
    assert await asyncio.gather(*waiters) == [7, 7, 7]
    assert attempts == 2


async def test_a_cancelled_reader_leaves_the_read_to_a_waiter() -> None:
    shared: SharedReads[str, int] = SharedReads(maxsize=8)
    started = asyncio.Event()

    async def slow() -> int:
        started.set()
        await asyncio.sleep(3600)
        return 0

    async def quick() -> int:
        return 5

    reader = asyncio.create_task(shared.get("k", slow))
    await started.wait()
    waiter = asyncio.create_task(shared.get("k", quick))
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert await waiter == 5
    # A cancelled waiter does not disturb the read it waited for.
    gate = asyncio.Event()

    async def gated() -> int:
        await gate.wait()
        return 9

    reading = asyncio.create_task(shared.get("g", gated))
    await asyncio.sleep(0)
    impatient = asyncio.create_task(shared.get("g", quick))
    await asyncio.sleep(0)
    impatient.cancel()
    gate.set()
    assert await reading == 9
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_range_reads_read_short_ranges_once_and_no_others() -> None:
    ranges: RangeReads[tuple[int, int]] = RangeReads(maxsize=4, longest=3, empty=(0, 0))
    asked: list[tuple[int, int]] = []

    async def read(after: int, upto: int) -> tuple[int, int]:
        asked.append((after, upto))
        return after, upto

    assert await ranges.get(5, 5, read) == (0, 0)  # empty: no read
    assert await ranges.get(5, 4, read) == (0, 0)
    assert await ranges.get(1, 5, read) is None  # longer than 3: no read
    assert await ranges.get(2, 5, read) == (2, 5)
    assert await ranges.get(2, 5, read) == (2, 5)  # kept
    assert asked == [(2, 5)]
