"""/relations and /threads in the room's topological order (depth, then stream position), as
/messages and as Synapse, on both databases: history backfilled from other servers (numbered
below the events stream) takes its place in both and pages through; a late event from a
fork with a small depth comes in its topological place; stream tokens of before still work,
malformed ones are 400 M_INVALID_PARAM."""

from __future__ import annotations

from typing import Any

import httpx

from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.rooms.incoming import Outcome
from tests.api.sliding_helpers import send
from tests.api.test_incoming_pipeline import public_room_with_eve
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, checked
from tests.incoming_helpers import RemoteRoom

V1 = "/_matrix/client/v1"


def thread_reply(root: str, body: str) -> JsonDict:
    return {
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {"rel_type": "m.thread", "event_id": root},
    }


async def relations(
    client: httpx.AsyncClient, tok: str, room_id: str, parent: str, **params: Any
) -> JsonDict:
    r = await client.get(
        f"{V1}/rooms/{room_id}/relations/{parent}", params=params, headers=auth_header(tok)
    )
    body: JsonDict = checked(r)
    return body


async def threads(client: httpx.AsyncClient, tok: str, room_id: str, **params: Any) -> JsonDict:
    r = await client.get(f"{V1}/rooms/{room_id}/threads", params=params, headers=auth_header(tok))
    body: JsonDict = checked(r)
    return body


async def paged(
    client: httpx.AsyncClient, tok: str, room_id: str, parent: str | None, **params: Any
) -> list[str]:
    """Every page, one event (or thread) at a time, following next_batch."""
    seen: list[str] = []
    for _ in range(20):
        page = (
            await relations(client, tok, room_id, parent, **params)
            if parent is not None
            else await threads(client, tok, room_id, **params)
        )
        seen += [e["event_id"] for e in page["chunk"]]
        if "next_batch" not in page:
            return seen
        params = {**params, "from": page["next_batch"]}
    raise AssertionError("no end")


async def backfilled(hs: Homeserver, room: RemoteRoom, pdu: JsonDict) -> None:
    [received] = await hs.incoming_events.receive_backfilled(
        room.room_id, [pdu], hs.clock.now_ms(), room
    )
    assert received.outcome is Outcome.ACCEPTED, received


async def test_backfilled_children_and_threads_take_their_place(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    room_id = room.room_id
    old_root = await send(client, tok, room_id, "old root")
    new_root = await send(client, tok, room_id, "new root")
    # Eve's replies, given to us as history: one in each thread, just after each root.
    early, early_id = await room.build(
        "m.room.message", thread_reply(old_root, "early"), prevs=[old_root]
    )
    await backfilled(hs, room, early)
    late_history, late_history_id = await room.build(
        "m.room.message", thread_reply(new_root, "from history"), prevs=[new_root]
    )
    await backfilled(hs, room, late_history)
    stored = await hs.event_store.get_event(early_id)
    assert stored is not None and stored.stream_ordering < 0  # below the events stream
    # Live replies, after them.
    live_old = await send_reply(client, tok, room_id, old_root, "live")

    # /relations: backwards newest first, history in its place; forwards the other way.
    assert await paged(client, tok, room_id, old_root, limit=1) == [live_old, early_id]
    assert await paged(client, tok, room_id, old_root, limit=1, dir="f") == [early_id, live_old]
    assert await paged(client, tok, room_id, new_root, limit=1) == [late_history_id]

    # /threads by the topological place of each thread's latest event: the old root's
    # thread has a live reply (deepest), the new root's only history.
    assert await paged(client, tok, room_id, None, limit=1) == [old_root, new_root]


async def send_reply(
    client: httpx.AsyncClient, tok: str, room_id: str, root: str, body: str
) -> str:
    r = await client.put(
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{body}",
        json=thread_reply(root, body),
        headers=auth_header(tok),
    )
    return str(checked(r)["event_id"])


async def test_a_late_event_of_a_fork_comes_in_its_topological_place(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    """A reply from Eve's server on the root, arriving after two of ours: last in the
    stream, but in topological order beside our first reply (the same depth, later in the
    stream) and before our second (deeper)."""
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    room_id = room.room_id
    root = await send(client, tok, room_id, "root")
    fork, fork_id = await room.build("m.room.message", thread_reply(root, "fork"), prevs=[root])
    ours = [await send_reply(client, tok, room_id, root, f"r{i}") for i in range(2)]
    [received] = await hs.incoming_events.receive(room_id, [fork], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED, received
    expected = [ours[1], fork_id, ours[0]]
    assert await paged(client, tok, room_id, root, limit=1) == expected
    assert await paged(client, tok, room_id, root, limit=2, dir="f") == expected[::-1]
    # The root's bundled thread summary names the topologically latest reply (ours, the
    # deepest), not the last to arrive.
    r = await client.get(
        f"/_matrix/client/v3/rooms/{room_id}/event/{root}", headers=auth_header(tok)
    )
    summary = checked(r)["unsigned"]["m.relations"]["m.thread"]
    assert summary["count"] == 3
    assert summary["latest_event"]["event_id"] == ours[1]
    # The thread list goes by each thread's latest event in the same order.
    other_root = await send(client, tok, room_id, "other root")
    await send_reply(client, tok, room_id, other_root, "other")
    assert await paged(client, tok, room_id, None, limit=1) == [other_root, root]


async def test_old_stream_tokens_work_and_bad_tokens_are_refused(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    room_id = room.room_id
    root = await send(client, tok, room_id, "root")
    replies = [await send_reply(client, tok, room_id, root, f"r{i}") for i in range(3)]
    # A stream token (what /relations gave before, or a sync's next_batch) is the timeline
    # as it was at that position of the events stream.
    second = await hs.event_store.get_event(replies[1])
    assert second is not None
    page = await relations(client, tok, room_id, root, **{"from": f"s{second.stream_ordering}"})
    assert [e["event_id"] for e in page["chunk"]] == replies[1::-1]
    page = await threads(client, tok, room_id, **{"from": f"s{second.stream_ordering - 1}"})
    assert page["chunk"] == []  # the thread's latest event is after that position
    page = await threads(client, tok, room_id, **{"from": f"s{second.stream_ordering + 5}"})
    assert [e["event_id"] for e in page["chunk"]] == [root]
    for bad in ("t1", "tx_1", "s-1", "x5", "t1_2_3_4", "t99999999999999999999_1"):
        for path in (f"relations/{root}", "threads"):
            r = await client.get(
                f"{V1}/rooms/{room_id}/{path}", params={"from": bad}, headers=auth_header(tok)
            )
            checked(r, 400, "M_INVALID_PARAM", documented=False)
        r = await client.get(
            f"{V1}/rooms/{room_id}/relations/{root}", params={"to": bad}, headers=auth_header(tok)
        )
        checked(r, 400, "M_INVALID_PARAM", documented=False)
