"""AccountDataStore and ToDeviceStore on both databases."""

from __future__ import annotations

from homeserver.core.ids import UserID
from homeserver.core.streams import Stream
from homeserver.storage.account_data import AccountData, AccountDataStore
from homeserver.storage.accounts import AccountStore
from homeserver.storage.database import Database
from homeserver.storage.to_device import ToDeviceStore

ALICE = UserID("@alice:test")
BOB = UserID("@bob:test")
ROOM = "!room:test"
OTHER_ROOM = "!other:test"
NOW = 1_700_000_000_000


async def _position(db: Database, stream: Stream) -> int:
    return (await db.current_positions())[stream]


# --- account data ------------------------------------------------------------------------


async def test_put_get_and_positions(db: Database) -> None:
    store = AccountDataStore(db)
    assert await store.get(ALICE, None, "t") is None
    p1 = await store.put(ALICE, None, "t", {"a": 1})
    p2 = await store.put(ALICE, ROOM, "t", {"room": 1})
    p3 = await store.put(ALICE, None, "t", {"a": 2})
    assert p1 < p2 < p3 == await _position(db, Stream.ACCOUNT_DATA)
    assert await store.get(ALICE, None, "t") == {"a": 2}
    assert await store.get(ALICE, ROOM, "t") == {"room": 1}
    assert await store.get(BOB, None, "t") is None


async def test_get_changed(db: Database) -> None:
    store = AccountDataStore(db)
    p1 = await store.put(ALICE, None, "a", {"v": 1})
    p2 = await store.put(ALICE, ROOM, "r", {"v": 1})
    p3 = await store.put(ALICE, None, "b", {"v": 1})
    await store.put(BOB, None, "a", {"bob": True})
    assert await store.get_changed(ALICE, rooms=False, after=None, upto=p3) == [
        AccountData(None, "a", {"v": 1}, p1),
        AccountData(None, "b", {"v": 1}, p3),
    ]
    assert await store.get_changed(ALICE, rooms=False, after=p1, upto=p3) == [
        AccountData(None, "b", {"v": 1}, p3)
    ]
    # Past the upper bound: left for the next sync.
    assert await store.get_changed(ALICE, rooms=False, after=None, upto=p2) == [
        AccountData(None, "a", {"v": 1}, p1)
    ]
    assert await store.get_changed(ALICE, rooms=True, after=None, upto=p3) == [
        AccountData(ROOM, "r", {"v": 1}, p2)
    ]
    assert await store.get_changed(ALICE, rooms=True, after=p2, upto=p3) == []


async def test_tags(db: Database) -> None:
    store = AccountDataStore(db)
    p1 = await store.put_room_tag(ALICE, ROOM, "m.favourite", {"order": 0.5})
    p2 = await store.put_room_tag(ALICE, OTHER_ROOM, "u.x", {})
    assert await store.get_room_tags(ALICE, ROOM) == {"m.favourite": {"order": 0.5}}
    assert await store.get_tags_changed(ALICE, [ROOM, OTHER_ROOM], after=None, upto=p2) == {
        ROOM: {"m.favourite": {"order": 0.5}},
        OTHER_ROOM: {"u.x": {}},
    }
    # Only the rooms asked for, and only those changed after the token.
    assert await store.get_tags_changed(ALICE, [ROOM], after=None, upto=p2) == {
        ROOM: {"m.favourite": {"order": 0.5}}
    }
    assert await store.get_tags_changed(ALICE, [ROOM, OTHER_ROOM], after=p1, upto=p2) == {
        OTHER_ROOM: {"u.x": {}}
    }
    p3 = await store.delete_room_tag(ALICE, OTHER_ROOM, "u.x")
    assert p3 > p2
    assert await store.get_room_tags(ALICE, OTHER_ROOM) == {}
    # An incremental sync sees the room emptied; an initial one does not see it at all.
    assert await store.get_tags_changed(ALICE, [ROOM, OTHER_ROOM], after=p2, upto=p3) == {
        OTHER_ROOM: {}
    }
    assert await store.get_tags_changed(ALICE, [ROOM, OTHER_ROOM], after=None, upto=p3) == {
        ROOM: {"m.favourite": {"order": 0.5}}
    }
    # Re-adding a deleted tag brings it back.
    await store.put_room_tag(ALICE, OTHER_ROOM, "u.x", {"order": 1})
    assert await store.get_room_tags(ALICE, OTHER_ROOM) == {"u.x": {"order": 1}}
    assert await store.get_room_tags(BOB, ROOM) == {}


# --- to-device ---------------------------------------------------------------------------


async def _devices(db: Database, user_id: UserID, *device_ids: str) -> None:
    accounts = AccountStore(db)
    for device_id in device_ids:
        await accounts.upsert_device(user_id, device_id, None, NOW)


async def test_add_messages_skips_unknown_and_is_idempotent(db: Database) -> None:
    await _devices(db, BOB, "B1", "B2")
    store = ToDeviceStore(db)
    result = await store.add_messages(
        ALICE,
        "A1",
        "txn",
        "t",
        {BOB: {"*": {"all": 1}, "B2": {"one": 2}, "GONE": {}}, "@nobody:test": {"X": {}}},
        NOW,
    )
    assert result is not None
    position, recipients = result
    assert recipients == [BOB] and position == await _position(db, Stream.TO_DEVICE)
    assert await store.add_messages(ALICE, "A1", "txn", "t", {BOB: {"B1": {}}}, NOW) is None
    b1 = await store.deliver(BOB, "B1", acknowledged=None, upto=position, limit=10)
    b2 = await store.deliver(BOB, "B2", acknowledged=None, upto=position, limit=10)
    assert [(m.sender, m.type, m.content) for m in b1] == [(ALICE, "t", {"all": 1})]
    assert [m.content for m in b2] == [{"one": 2}]
    # Nobody to deliver to: no position used, and the transaction still counts as done.
    assert await store.add_messages(ALICE, "A1", "txn2", "t", {BOB: {"GONE": {}}}, NOW) == (0, [])
    assert await store.add_messages(ALICE, "A1", "txn2", "t", {BOB: {"B1": {}}}, NOW) is None


async def test_deliver_acknowledges_only_what_was_carried(db: Database) -> None:
    await _devices(db, BOB, "B1")
    store = ToDeviceStore(db)
    positions = []
    for n in range(5):
        result = await store.add_messages(ALICE, "A1", f"t{n}", "t", {BOB: {"B1": {"n": n}}}, NOW)
        assert result is not None
        positions.append(result[0])
    upto = positions[-1]
    # A response at ``upto`` carries the first two (limit); a sync from ``upto`` acks those.
    first = await store.deliver(BOB, "B1", acknowledged=None, upto=upto, limit=2)
    assert [m.content["n"] for m in first] == [0, 1]
    second = await store.deliver(BOB, "B1", acknowledged=upto, upto=upto, limit=2)
    assert [m.content["n"] for m in second] == [2, 3]
    # A retry from an older token acknowledges nothing more and repeats the same messages.
    retry = await store.deliver(BOB, "B1", acknowledged=upto - 1, upto=upto, limit=2)
    assert [m.content["n"] for m in retry] == [2, 3]
    third = await store.deliver(BOB, "B1", acknowledged=upto, upto=upto, limit=2)
    assert [m.content["n"] for m in third] == [4]
    assert await store.deliver(BOB, "B1", acknowledged=upto, upto=upto, limit=2) == []
    assert await store.count_pending(BOB, "B1") == 0


async def test_deliver_stops_at_the_response_position(db: Database) -> None:
    await _devices(db, BOB, "B1")
    store = ToDeviceStore(db)
    r1 = await store.add_messages(ALICE, "A1", "t1", "t", {BOB: {"B1": {"n": 1}}}, NOW)
    r2 = await store.add_messages(ALICE, "A1", "t2", "t", {BOB: {"B1": {"n": 2}}}, NOW)
    assert r1 is not None and r2 is not None
    got = await store.deliver(BOB, "B1", acknowledged=None, upto=r1[0], limit=10)
    assert [m.content for m in got] == [{"n": 1}]
    got = await store.deliver(BOB, "B1", acknowledged=r1[0], upto=r2[0], limit=10)
    assert [m.content for m in got] == [{"n": 2}]


async def test_delete_for_devices(db: Database) -> None:
    await _devices(db, BOB, "B1", "B2")
    store = ToDeviceStore(db)
    await store.add_messages(ALICE, "A1", "t1", "t", {BOB: {"*": {}}}, NOW)
    await store.add_messages(BOB, "B1", "own", "t", {ALICE: {"A1": {}}}, NOW)
    await store.delete_for_devices(BOB, ["B1"])
    assert await store.count_pending(BOB, "B1") == 0
    assert await store.count_pending(BOB, "B2") == 1
    # B1's transaction IDs went too: a new device with that ID starts afresh.
    await _devices(db, ALICE, "A1")
    assert await store.add_messages(BOB, "B1", "own", "t", {ALICE: {"A1": {}}}, NOW) not in (
        None,
        (0, []),
    )
    await store.delete_for_devices(BOB, [])
