"""A sync from scratch reads its joined rooms' timelines, versions and member counts for all
of them at once: its statements grow by fewer per room than before (issue 24, a user in
1 000 rooms)."""

from __future__ import annotations

import httpx

from tests.api.sliding_helpers import send
from tests.helpers import auth_header, count_statements, create_room, register

ROOMS = 20


async def _initial_sync(client: httpx.AsyncClient, token: str) -> tuple[int, dict[str, object]]:
    with count_statements() as statements:
        r = await client.get("/_matrix/client/v3/sync", headers=auth_header(token))
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return len(statements), body


async def test_initial_sync_reads_rooms_in_batches(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    _, other = await register(client, "bob")
    rooms = [await create_room(client, token, name=f"room {i}") for i in range(ROOMS)]
    for i, room_id in enumerate(rooms):
        await send(client, token, room_id, f"m{i}")
    first = [await create_room(client, other, name="bob's") for _ in range(2)]
    for room_id in first:
        await send(client, other, room_id, "hello")
    await _initial_sync(client, token)  # caches every sync shares, warmed
    await _initial_sync(client, other)
    few, _ = await _initial_sync(client, other)
    many, body = await _initial_sync(client, token)
    joined = body["rooms"]["join"]  # type: ignore[index]
    assert set(joined) == set(rooms)
    for i, room_id in enumerate(rooms):
        room = joined[room_id]
        assert [e["content"].get("body") for e in room["timeline"]["events"]][-1] == f"m{i}"
        assert room["summary"]["m.joined_member_count"] == 1
    per_room = (many - few) / (ROOMS - 2)
    # 7 statements per room before the batched reads (24 and 150), 4 after (21 and 93): the
    # state-group walk (3) and the heroes (1) are still read per room.
    assert per_room <= 4.5, (few, many)
