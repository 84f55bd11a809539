"""What a metrics scrape reads from the database: the pushers' queues, by kind, and the
application services' transactions."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.metrics import AppServiceQueue, FederationQueues, MetricsStore, PusherQueues
from homeserver.storage.schema import (
    appservice_state,
    appservice_txns,
    federation_destinations,
    federation_outbound_edus,
    federation_outbound_pdus,
    push_queue,
    pushers,
    stream_positions,
)


async def add_pusher(db: Database, pusher_id: int, kind: str, queued: int, attempts: int) -> None:
    async with db.write() as conn:
        await conn.execute(
            sa.insert(pushers).values(
                id=pusher_id,
                user_id=f"@u{pusher_id}:test",
                kind=kind,
                app_id="app",
                pushkey=f"key{pusher_id}",
                app_display_name="App",
                device_display_name="Phone",
                lang="en",
                data={},
                pushkey_ts=0,
                attempts=attempts,
            )
        )
        for position in range(1, queued + 1):
            await conn.execute(
                sa.insert(push_queue).values(
                    pusher_id=pusher_id,
                    stream_ordering=position,
                    user_id=f"@u{pusher_id}:test",
                    room_id="!r:test",
                    event_id=f"$e{position}",
                    actions="[]",
                    event_ts=0,
                    due_ts=0,
                )
            )


async def test_pusher_queues_by_kind(db: Database) -> None:
    store = MetricsStore(db)
    assert await store.pusher_queues() == []
    await add_pusher(db, 1, "http", 3, 0)
    await add_pusher(db, 2, "http", 5, 2)
    await add_pusher(db, 3, "http", 0, 0)
    await add_pusher(db, 4, "email", 1, 0)
    queues = sorted(await store.pusher_queues(), key=lambda q: q.kind)
    assert queues == [
        PusherQueues("email", queued=1, pushers=1, deepest=1, backing_off=0),
        PusherQueues("http", queued=8, pushers=2, deepest=5, backing_off=1),
    ]


async def test_appservice_queues(db: Database) -> None:
    store = MetricsStore(db)
    assert await store.appservice_queues() == []
    async with db.write() as conn:
        await conn.execute(
            sa.update(stream_positions)
            .where(stream_positions.c.stream == "events")
            .values(position=50)
        )
        for service_id, cursor, attempts in (("irc", 50, 0), ("slack", 30, 3)):
            await conn.execute(
                sa.insert(appservice_state).values(
                    service_id=service_id,
                    events_cursor=cursor,
                    receipts_cursor=0,
                    typing_cursor=0,
                    presence_cursor=0,
                    to_device_cursor=0,
                    last_txn_id=2,
                    attempts=attempts,
                    next_attempt_ts=0,
                    lease_until_ts=0,
                )
            )
        for txn_id in (1, 2):
            await conn.execute(
                sa.insert(appservice_txns).values(
                    service_id="slack", txn_id=txn_id, body="{}", created_ts=0
                )
            )
    queues = sorted(await store.appservice_queues(), key=lambda q: q.service_id)
    assert queues == [
        AppServiceQueue("irc", pending=0, events_behind=0, attempts=0),
        AppServiceQueue("slack", pending=2, events_behind=20, attempts=3),
    ]


async def test_federation_queues(db: Database) -> None:
    store = MetricsStore(db)
    assert await store.federation_queues(1_000) == FederationQueues(0, 0, 0, 0, 0)
    async with db.write() as conn:
        for destination, retry_at in (("a.test", 0), ("b.test", 5_000), ("c.test", 500)):
            await conn.execute(
                sa.insert(federation_destinations).values(
                    destination=destination,
                    retry_interval_ms=0 if retry_at == 0 else 5_000,
                    retry_at_ts=retry_at,
                    next_txn_id=1,
                    catching_up=False,
                )
            )
        for position in (1, 2, 3):
            await conn.execute(
                sa.insert(federation_outbound_pdus).values(
                    destination="b.test",
                    stream_ordering=position,
                    room_id="!r",
                    event_id=f"$e{position}",
                )
            )
        await conn.execute(
            sa.insert(federation_outbound_pdus).values(
                destination="a.test", stream_ordering=3, room_id="!r", event_id="$e3"
            )
        )
        await conn.execute(
            sa.insert(federation_outbound_edus).values(
                destination="a.test", edu_type="m.typing", content_json="{}", queued_ts=0
            )
        )
    # b.test: 3 events, backing off until 5 000; a.test: 1 event and 1 EDU; c.test's retry
    # time has passed.
    assert await store.federation_queues(1_000) == FederationQueues(4, 1, 2, 3, 1)
