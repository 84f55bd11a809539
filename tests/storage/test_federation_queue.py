"""The federation queue store on both databases: inbound answers, the cursor's
compare-and-swap, per-destination queues, EDU coalescing, catch-up, back-off, transaction
numbers and device list prev_ids."""

from __future__ import annotations

from homeserver.storage.database import Database
from homeserver.storage.federation_queue import FederationQueueStore, OutboundPdu


async def test_inbound_answers_are_kept_per_origin_and_pruned(db: Database) -> None:
    store = FederationQueueStore(db)
    assert await store.get_inbound_txn("a.test", "1") is None
    await store.put_inbound_txn("a.test", "1", '{"pdus": {}}', 1000)
    await store.put_inbound_txn("a.test", "1", '{"pdus": {"x": {}}}', 2000)  # kept: first
    assert await store.get_inbound_txn("a.test", "1") == '{"pdus": {}}'
    assert await store.get_inbound_txn("b.test", "1") is None
    await store.prune_inbound(1001)
    assert await store.get_inbound_txn("a.test", "1") is None


async def test_the_cursor_moves_only_from_where_it_was(db: Database) -> None:
    store = FederationQueueStore(db)
    assert await store.get_position("events") is None
    assert await store.queue_pdus("events", [], None, 10)
    assert not await store.queue_pdus("events", [], None, 12)  # another sender was first
    row = OutboundPdu("d.test", 11, "!r:x", "$e11")
    assert await store.queue_pdus("events", [row], 10, 12)
    assert await store.get_position("events") == 12
    assert not await store.queue_pdus("events", [row], 10, 13)
    assert await store.count_pdus("d.test") == 1


async def test_batches_catch_up_and_back_off(db: Database) -> None:
    store = FederationQueueStore(db)
    rows = [
        OutboundPdu("d.test", n, "!a:x" if n % 2 else "!b:x", f"$e{n}") for n in range(1, 8)
    ] + [OutboundPdu("other.test", 1, "!a:x", "$e1")]
    assert await store.queue_pdus("events", rows, None, 7)
    assert await store.due_destinations(0, 10) == ["d.test", "other.test"]
    pdus, edus = await store.get_batch("d.test", 3, 10)
    assert [p.stream_ordering for p in pdus] == [1, 2, 3] and edus == []
    # A failure: not due before its retry time, and caught up then.
    await store.backed_off("d.test", 5000, 6000)
    state = await store.get_destination("d.test")
    assert state is not None and state.catching_up and state.retry_at_ts == 6000
    assert await store.due_destinations(5999, 10) == ["other.test"]
    assert await store.next_retry_ts(5999) == 6000
    assert await store.next_retry_ts(6000) is None
    assert await store.catch_up("d.test") == 5
    pdus, _ = await store.get_batch("d.test", 50, 10)
    assert [(p.room_id, p.stream_ordering) for p in pdus] == [("!b:x", 6), ("!a:x", 7)]
    assert await store.count_pdus("other.test") == 1  # another destination's queue is kept
    await store.remove_sent("d.test", [6, 7], [], succeeded=True)
    state = await store.get_destination("d.test")
    assert state is not None and state.retry_interval_ms == 0 and not state.catching_up
    assert await store.due_destinations(0, 10) == ["other.test"]


async def test_edus_coalesce_by_key_and_keep_their_order(db: Database) -> None:
    store = FederationQueueStore(db)
    await store.queue_edu({"d.test", "e.test"}, "m.typing", '{"typing": true}', "typing r u", 1)
    await store.queue_edu({"d.test"}, "m.direct_to_device", '{"n": 1}', None, 2)
    await store.queue_edu({"d.test"}, "m.direct_to_device", '{"n": 2}', None, 3)
    await store.queue_edu({"d.test"}, "m.typing", '{"typing": false}', "typing r u", 4)
    _, edus = await store.get_batch("d.test", 10, 10)
    assert [(e.edu_type, e.content_json) for e in edus] == [
        ("m.direct_to_device", '{"n": 1}'),
        ("m.direct_to_device", '{"n": 2}'),
        ("m.typing", '{"typing": false}'),
    ]
    _, edus = await store.get_batch("e.test", 10, 10)
    assert [e.content_json for e in edus] == ['{"typing": true}']
    _, first_two = await store.get_batch("d.test", 10, 2)
    await store.remove_sent("d.test", [], [e.id for e in first_two], succeeded=True)
    _, left = await store.get_batch("d.test", 10, 10)
    assert [e.content_json for e in left] == ['{"typing": false}']


async def test_transaction_numbers_and_device_lists_sent(db: Database) -> None:
    store = FederationQueueStore(db)
    await store.queue_edu({"d.test"}, "m.typing", "{}", None, 1)
    numbers = [await store.take_txn_id("d.test") for _ in range(3)]
    assert numbers == [1, 2, 3]
    assert await store.get_device_lists_sent("d.test", ["@u:us"]) == {}
    await store.remove_sent("d.test", [], [], succeeded=True, device_lists={"@u:us": 5})
    await store.remove_sent("d.test", [], [], succeeded=True, device_lists={"@u:us": 9})
    await store.remove_sent("e.test", [], [], succeeded=False, device_lists={"@v:us": 3})
    assert await store.get_device_lists_sent("d.test", ["@u:us", "@v:us"]) == {"@u:us": 9}
    assert await store.get_device_lists_sent("e.test", ["@u:us", "@v:us"]) == {"@v:us": 3}


async def test_device_list_updates_replace_per_device_and_collapse_per_user(db: Database) -> None:
    store = FederationQueueStore(db)
    edu = "m.device_list_update"

    async def queue(user: str, device: str, n: int, keep: int = 3) -> int:
        return await store.queue_device_list_update(
            {"d.test"}, edu, user, device, f"{device}{n}", f"marker{device}{n}", keep, n
        )

    assert await queue("@u:us", "A", 1) == 0
    assert await queue("@u:us", "B", 2) == 0
    assert await queue("@u:us", "A", 3) == 0  # replaces A1, after B2
    assert await queue("@u_x:us", "A", 4) == 0  # another user (a LIKE wildcard in the name)
    _, edus = await store.get_batch("d.test", 10, 10)
    assert [e.content_json for e in edus] == ["B2", "A3", "A4"]
    assert await queue("@u:us", "C", 5) == 0  # three about @u:us: within keep
    # A fourth device: only the newest stays, as the marker.
    assert await queue("@u:us", "D", 6) == 3
    _, edus = await store.get_batch("d.test", 10, 10)
    assert [e.content_json for e in edus] == ["A4", "markerD6"]
