"""An event acknowledged with its event_id survives a kill -9 of the server, on both
databases, also when sends share a commit (SQLite group commit: many senders at once)."""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.conftest import ServerProcess
from tests.helpers import auth_header, create_room, register

SENDERS = 12


async def test_acknowledged_events_survive_kill_9(server: ServerProcess) -> None:
    acknowledged: list[tuple[str, str, str]] = []  # (token, room_id, event_id)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        users = [await register(client, f"sender{i}") for i in range(SENDERS)]
        rooms = [await create_room(client, token) for _, token in users]

        async def send(token: str, room_id: str) -> None:
            for i in range(100_000):
                try:
                    r = await client.put(
                        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{i}",
                        json={"msgtype": "m.text", "body": f"message {i}"},
                        headers=auth_header(token),
                    )
                except httpx.TransportError:
                    return  # the server is gone
                if r.status_code == 200:
                    acknowledged.append((token, room_id, r.json()["event_id"]))

        senders = [
            asyncio.create_task(send(token, room_id))
            for (_, token), room_id in zip(users, rooms, strict=True)
        ]
        # Kill once enough sends are acknowledged, however slow the machine is today.
        for _ in range(600):
            if len(acknowledged) > SENDERS * 5:
                break
            await asyncio.sleep(0.05)
        server.kill()
        await asyncio.wait_for(asyncio.gather(*senders), 30)
    assert len(acknowledged) > SENDERS * 5  # enough sends in flight to share commits

    server.start()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        for token, room_id, event_id in acknowledged:
            r = await client.get(
                f"/_matrix/client/v3/rooms/{room_id}/event/{event_id}", headers=auth_header(token)
            )
            assert r.status_code == 200, (event_id, r.text)
        # The rooms still take events after the restart.
        token, room_id, _ = acknowledged[-1]
        r = await client.put(
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/after",
            json={"msgtype": "m.text", "body": "after"},
            headers=auth_header(token),
        )
        assert r.status_code == 200, r.text
