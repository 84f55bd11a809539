"""Unread counts asked for while a count of the same rooms runs are made in one query."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from homeserver.push.unread import _CountBatch
from homeserver.storage.push import PushStore, ThreadUnread


class _Store:
    """count_unread_of, held until released; each user has one unread in each room."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], tuple[str, ...], int | None]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def count_unread_of(
        self, user_ids: Sequence[str], room_ids: Sequence[str], upto: int | None = None
    ) -> dict[str, Any]:
        self.calls.append((sorted(user_ids), tuple(room_ids), upto))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return {u: {r: {"main": ThreadUnread(1, 0, 5)} for r in room_ids} for u in user_ids}


async def test_counts_asked_meanwhile_are_made_together() -> None:
    store = _Store()
    batch = _CountBatch(cast(PushStore, store))
    first = asyncio.create_task(batch.count("@a:t", ["!r", "!q"], 7))
    await asyncio.sleep(0)
    others = [asyncio.create_task(batch.count(u, ["!q", "!r"], 7)) for u in ("@b:t", "@c:t")]
    elsewhere = asyncio.create_task(batch.count("@d:t", ["!r"], 7))  # other rooms: at once
    await asyncio.sleep(0)
    store.release.set()
    assert (await first)["!r"]["main"].notifications == 1
    for task in others:
        assert set(await task) == {"!q", "!r"}
    assert set(await elsewhere) == {"!r"}
    assert store.calls == [
        (["@a:t"], ("!q", "!r"), 7),
        (["@d:t"], ("!r",), 7),
        (["@b:t", "@c:t"], ("!q", "!r"), 7),
    ]


async def test_a_failed_count_fails_everyone_waiting_for_it() -> None:
    store = _Store()
    batch = _CountBatch(cast(PushStore, store))
    first = asyncio.create_task(batch.count("@a:t", ["!r"], 7))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(batch.count("@b:t", ["!r"], 7))
    await asyncio.sleep(0)
    store.fail = RuntimeError("database gone")
    store.release.set()
    with pytest.raises(RuntimeError):
        await first
    with pytest.raises(RuntimeError):
        await waiting
    # Nothing is left running or queued: the next count runs at once.
    store.fail = None
    assert (await batch.count("@c:t", ["!r"], 8))["!r"]["main"].notifications == 1


async def test_a_caller_that_goes_away_leaves_the_others_their_counts() -> None:
    store = _Store()
    batch = _CountBatch(cast(PushStore, store))
    first = asyncio.create_task(batch.count("@a:t", ["!r"], 7))
    await asyncio.sleep(0)
    leaving = asyncio.create_task(batch.count("@b:t", ["!r"], 7))
    staying = asyncio.create_task(batch.count("@c:t", ["!r"], 7))
    await asyncio.sleep(0)
    leaving.cancel()
    store.release.set()
    await first
    assert (await staying)["!r"]["main"].notifications == 1
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert [users for users, _, _ in store.calls] == [["@a:t"], ["@b:t", "@c:t"]]
