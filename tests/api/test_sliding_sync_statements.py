"""Sliding sync reads the rooms of a window in batches: the SQL statements of a response do
not grow with the number of rooms it sends (issue 20: ~62 statements for 20 rooms)."""

from __future__ import annotations

from typing import Any

import httpx

from homeserver.app import Homeserver
from tests.api.sliding_helpers import send, sliding
from tests.helpers import auth_header, count_statements, create_room, register

ROOMS = 24

# As Element X asks for its first window (bench/scenario_sliding.py cites the source).
REQUIRED_STATE = [["m.room.avatar", ""], ["m.room.encryption", ""], ["m.room.power_levels", ""]]


def _request(window: int) -> dict[str, Any]:
    return {
        "lists": {
            "all_rooms": {
                "ranges": [[0, window - 1]],
                "timeline_limit": 1,
                "required_state": REQUIRED_STATE,
                "filters": {"is_invite": False, "not_room_types": ["m.space"]},
            }
        },
        "extensions": {"account_data": {"enabled": True}, "e2ee": {"enabled": True}},
    }


async def _statements(
    client: httpx.AsyncClient, hs: Homeserver, token: str, body: dict[str, Any], **kw: Any
) -> tuple[int, dict[str, Any]]:
    with count_statements() as statements:
        response = await sliding(client, token, body, **kw)
    return len(statements), response


async def test_statements_do_not_grow_with_the_window(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    _, token = await register(client, "alice")
    rooms = [await create_room(client, token, name=f"room {i}") for i in range(ROOMS)]
    for i, room_id in enumerate(rooms):
        await send(client, token, room_id, f"m{i}")
    # Warm the caches every request shares (room versions, the user's room list), so that
    # the two counts below differ only by what depends on the window.
    await sliding(client, token, _request(1))
    small, first_small = await _statements(client, hs, token, _request(2))
    large, first_large = await _statements(client, hs, token, _request(20))
    assert len(first_small["rooms"]) == 2 and len(first_large["rooms"]) == 20
    for room_id, room in first_large["rooms"].items():
        assert room["name"] == f"room {rooms.index(room_id)}"
        assert [e["content"]["body"] for e in room["timeline"]] == [f"m{rooms.index(room_id)}"]
        assert {e["type"] for e in room["required_state"]} == {"m.room.power_levels"}
    # 126 and 19 before the window's reads were batched; 13 and 13 after (a few more on a
    # loaded PostgreSQL, where a cache may miss: a read per room would add 18).
    assert large - small <= 5, (small, large)

    # Incremental: one new message in one room of the window.
    await send(client, token, rooms[3], "new")
    count, moved = await _statements(client, hs, token, _request(20), pos=first_large["pos"])
    assert list(moved["rooms"]) == [rooms[3]]
    assert [e["content"]["body"] for e in moved["rooms"][rooms[3]]["timeline"]] == ["new"]
    assert count <= 16, count


async def test_a_prefetched_timeline_still_bundles_its_children(
    client: httpx.AsyncClient,
) -> None:
    """Rooms sent from scratch learn in one read which events have children: an event
    with a thread reply carries its bundle, one without carries none."""
    _, token = await register(client, "alice")
    plain = await create_room(client, token, name="plain")
    reacted = await create_room(client, token, name="reacted")
    await send(client, token, plain, "alone")
    target = await send(client, token, reacted, "liked")
    r = await client.put(
        f"/_matrix/client/v3/rooms/{reacted}/send/m.room.message/r1",
        json={
            "msgtype": "m.text",
            "body": "reply",
            "m.relates_to": {"rel_type": "m.thread", "event_id": target},
        },
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    body = {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 2, "required_state": []}}}
    first = await sliding(client, token, body)
    liked = next(e for e in first["rooms"][reacted]["timeline"] if e["event_id"] == target)
    thread = liked["unsigned"]["m.relations"]["m.thread"]
    assert thread["count"] == 1 and thread["latest_event"]["content"]["body"] == "reply"
    for event in first["rooms"][plain]["timeline"]:
        assert "m.relations" not in event.get("unsigned", {})
