"""PusherStore on both databases: the push sender's scan of push actions, batch by batch."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.pushers import PendingAction, Pusher, PusherStore
from homeserver.storage.schema import event_push_actions, stream_positions

ROOM = "!room:test"


async def _pusher(store: PusherStore, user_id: str) -> None:
    await store.set_pusher(
        user_id=user_id,
        kind="http",
        app_id="app",
        pushkey=user_id,
        app_display_name="App",
        device_display_name="Phone",
        profile_tag=None,
        lang="en",
        data={"url": "http://push.test"},
        ts=1,
        device_id=None,
        append=True,
    )


async def _notify(db: Database, position: int, users: list[str]) -> None:
    async with db.write() as conn:
        await conn.execute(
            sa.insert(event_push_actions),
            [
                {
                    "stream_ordering": position,
                    "user_id": u,
                    "room_id": ROOM,
                    "event_id": f"$e{position}",
                    "thread_id": "main",
                    "actions": '["notify"]',
                    "highlight": False,
                    "ts": position,
                }
                for u in users
            ],
        )
        await conn.execute(
            sa.update(stream_positions)
            .where(stream_positions.c.stream == "events")
            .values(position=position)
        )


async def test_pending_comes_in_whole_events_and_only_for_pushers(db: Database) -> None:
    store = PusherStore(db)
    pushing = ["@a:test", "@b:test", "@c:test"]
    for user in pushing:
        await _pusher(store, user)
    # Rows of users with a pusher: 2 at position 1, 3 at 2, 1 at 4; none at 3 (no pusher).
    await _notify(db, 1, ["@a:test", "@b:test", "@nopusher:test"])
    await _notify(db, 2, pushing)
    await _notify(db, 3, ["@nopusher:test"])
    await _notify(db, 4, ["@c:test"])

    def of(pending: list[tuple[PendingAction, Pusher]]) -> list[tuple[int, str]]:
        return sorted((a.stream_ordering, a.user_id) for a, _ in pending)

    # Four rows at most: position 2's three would not fit beside position 1's two.
    pending, reach = await store.get_pending(0, 4, 4)
    assert (of(pending), reach) == ([(1, "@a:test"), (1, "@b:test")], 1)
    # The rest fits: the batch reaches the end of the range.
    pending, reach = await store.get_pending(reach, 4, 4)
    assert reach == 4 and of(pending) == [(2, u) for u in pushing] + [(4, "@c:test")]
    # One event with more rows than a batch holds is read alone, whole.
    pending, reach = await store.get_pending(1, 4, 2)
    assert (of(pending), reach) == ([(2, u) for u in pushing], 2)
    # Nothing for anyone with a pusher: the whole range is done.
    assert await store.get_pending(2, 3, 2) == ([], 3)
    assert await store.get_pending(4, 4, 2) == ([], 4)
    # A pusher made now hears of later events only.
    await _pusher(store, "@nopusher:test")
    assert await store.get_pending(2, 3, 2) == ([], 3)
    await _notify(db, 5, ["@nopusher:test"])
    pending, reach = await store.get_pending(4, 5, 2)
    assert (of(pending), reach) == ([(5, "@nopusher:test")], 5)
