"""EDUs for a dead destination stay bounded, on both databases: 10 000 EDUs queued while
dest.test is backed off leave a few hundred rows; once it answers it gets the latest typing,
receipt and presence of each subject, every to-device message in order, and device list
updates whose prev_id chain is whole (the newest per device) or, for a user whose updates
were collapsed, starts with one that makes it resync the user's list."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import sqlalchemy as sa

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.federation.outbox import MAX_DEVICE_UPDATES_PER_USER, FederationOutbox
from homeserver.storage.schema import federation_outbound_edus
from tests.api.e2ee_helpers import new_device
from tests.api.test_federation_sender import (  # noqa: F401 - fixtures
    DEST,
    EVE,
    Destination,
    destination,
    send_message,
    sending,
    shared_room,
    until,
)
from tests.helpers import checked

V3 = "/_matrix/client/v3"
TYPERS = [f"@typer{n}:test" for n in range(10)]


async def queued_rows(hs: Homeserver) -> dict[str, int]:
    query = (
        sa.select(federation_outbound_edus.c.edu_type, sa.func.count())
        .where(federation_outbound_edus.c.destination == DEST)
        .group_by(federation_outbound_edus.c.edu_type)
    )
    async with hs.db.read() as conn:
        return {str(r[0]): int(r[1]) for r in (await conn.execute(query)).all()}


async def test_ten_thousand_edus_to_a_dead_destination_stay_bounded(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination, clock: FakeClock
) -> None:
    hs, client = sending
    outbox = hs.edu_outbox
    assert isinstance(outbox, FederationOutbox)
    alice, room_id = await shared_room(hs, client)
    bob = await new_device(client, "bob")
    checked(await client.post(f"{V3}/rooms/{room_id}/join", json={}, headers=bob.headers))
    # One update about Alice's device reaches dest.test before the outage.
    await outbox.device_list_changed(alice.user_id, 1, "A0", deleted=False)
    await until(lambda: bool(destination.edus("m.device_list_update")))
    [before] = destination.edus("m.device_list_update")
    assert before["prev_id"] == [] and before["stream_id"] == 1
    # The destination dies, and is backed off after its next transaction fails.
    destination.status = 500
    await send_message(client, alice, room_id, 1)
    store = hs.federation_queue_store

    async def backed_off() -> bool:
        state = await store.get_destination(DEST)
        return state is not None and state.retry_interval_ms > 0

    async with asyncio.timeout(30):
        while not await backed_off():
            await asyncio.sleep(0.02)
    received_before = len(destination.received)

    # 10 000 EDUs while it is down.
    last_event = await send_message(client, alice, room_id, 2)
    queued = 0
    for n in range(2000):
        await outbox.typing(room_id, TYPERS[n % 10], typing=n % 3 != 0)
        await outbox.read_receipt(room_id, TYPERS[n % 10], last_event, None, n)
        await outbox.presence(alice.user_id, {"presence": "online", "status_msg": f"s{n}"})
        queued += 3
    stream_id = 1
    for n in range(2000):  # Alice: 50 devices changing over and over
        stream_id += 1
        await outbox.device_list_changed(alice.user_id, stream_id, f"A{n % 50}", deleted=False)
        queued += 1
    for n in range(1900):  # Bob: a new device each time (churn past the per-user bound)
        stream_id += 1
        await outbox.device_list_changed(bob.user_id, stream_id, f"B{n}", deleted=n % 2 == 1)
        queued += 1
    for n in range(100):
        await outbox.to_device(alice.user_id, "m.test", f"msg{n}", {EVE: {"EVEDEV": {"n": n}}})
        queued += 1
    assert queued == 10_000
    rows = await queued_rows(hs)
    assert rows["m.typing"] == 10 and rows["m.receipt"] == 10 and rows["m.presence"] == 1
    assert rows["m.direct_to_device"] == 100  # never dropped
    # Alice: one per device; Bob: at most the bound, plus his newest.
    assert 50 < rows["m.device_list_update"] <= 50 + MAX_DEVICE_UPDATES_PER_USER + 1
    assert sum(rows.values()) <= 10 + 10 + 1 + 100 + 50 + MAX_DEVICE_UPDATES_PER_USER + 1
    assert len(destination.received) == received_before  # nothing tried while backed off

    # It comes back: the retry time passes.
    destination.status = 200
    state = await store.get_destination(DEST)
    assert state is not None
    clock.advance(state.retry_at_ts - clock.now_ms() + 1)
    hs.federation_wake.set()
    async with asyncio.timeout(60):
        while await queued_rows(hs):
            await asyncio.sleep(0.05)
    after = destination.received[received_before:]

    def edus(edu_type: str) -> list[dict[str, Any]]:
        return [e["content"] for t in after for e in t["body"]["edus"] if e["edu_type"] == edu_type]

    assert all(len(t["body"]["edus"]) <= 100 for t in after)
    # The latest state of each subject only.
    typing = edus("m.typing")
    assert len(typing) == 10
    assert {(t["user_id"], t["typing"]) for t in typing} == {
        (TYPERS[n % 10], n % 3 != 0) for n in range(1990, 2000)
    }
    receipts = edus("m.receipt")
    assert len(receipts) == 10
    assert {
        u: r["data"]["ts"] for e in receipts for u, r in e[room_id]["m.read"].items()
    } == {TYPERS[n % 10]: n for n in range(1990, 2000)}
    [presence] = edus("m.presence")
    assert presence["push"][0]["status_msg"] == "s1999"
    # Every to-device message, in order.
    assert [m["message_id"] for m in edus("m.direct_to_device")] == [f"msg{n}" for n in range(100)]
    # Device lists: Alice's newest update of each device, chained on the one sent before.
    updates = edus("m.device_list_update")
    alices = [u for u in updates if u["user_id"] == alice.user_id]
    assert sorted(u["stream_id"] for u in alices) == list(range(1952, 2002))
    previous = before["stream_id"]
    for u in alices:
        assert u["prev_id"] == [previous]
        previous = u["stream_id"]
    # Bob's: collapsed, so the first names itself as its prev_id (an update dest.test cannot
    # have applied: it fetches his whole list); the rest chain on it.
    bobs = [u for u in updates if u["user_id"] == bob.user_id]
    assert bobs[0]["prev_id"] == [bobs[0]["stream_id"]]
    for a, b in zip(bobs, bobs[1:], strict=False):
        assert b["prev_id"] == [a["stream_id"]]
    assert bobs[-1]["stream_id"] == stream_id and bobs[-1]["device_id"] == "B1899"
    assert len(bobs) <= MAX_DEVICE_UPDATES_PER_USER + 1
