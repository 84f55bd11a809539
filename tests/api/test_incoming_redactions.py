"""Redactions from other servers (rooms/fragments/v3-handling-redactions.md): from room
version 3 the auth rules let every redaction in, and it is applied only when its sender has
the redact level or shares a server with the redacted event's sender; `redacts` is read where
the room version puts it."""

from __future__ import annotations

import httpx

from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.rooms.incoming import Outcome
from tests.api.test_incoming_pipeline import V3, public_room_with_eve
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, checked
from tests.incoming_helpers import RemoteRoom


async def served_content(
    client: httpx.AsyncClient, tok: str, room_id: str, event_id: str
) -> dict[str, object]:
    r = await client.get(f"{V3}/rooms/{room_id}/event/{event_id}", headers=auth_header(tok))
    content = checked(r)["content"]
    assert isinstance(content, dict)
    return content


async def redaction(room: RemoteRoom, content_target: str, top_target: str) -> JsonDict:
    """Eve's redaction with `redacts` in content and at the top level."""
    pdu, _ = await room.build("m.room.redaction", {"redacts": content_target})
    pdu["redacts"] = top_target
    await room.resign(pdu)
    return pdu


async def receive(hs: Homeserver, room: RemoteRoom, pdu: JsonDict) -> Outcome:
    [received] = await hs.incoming_events.receive(room.room_id, [pdu], hs.clock.now_ms())
    return received.outcome


async def alice_says(client: httpx.AsyncClient, tok: str, room_id: str, body: str) -> str:
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/{body}",
        json={"msgtype": "m.text", "body": body},
        headers=auth_header(tok),
    )
    event_id = checked(r)["event_id"]
    assert isinstance(event_id, str)
    return event_id


async def test_a_powerless_remote_user_cannot_redact_our_users_events(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    target = await alice_says(client, tok, room.room_id, "mine")
    # Accepted into the graph (the auth rules allow it) but not applied.
    assert await receive(hs, room, await redaction(room, target, target)) is Outcome.ACCEPTED
    assert await served_content(client, tok, room.room_id, target) == {
        "msgtype": "m.text",
        "body": "mine",
    }
    stored = await hs.event_store.get_event(target)
    assert stored is not None and stored.redacted_by is None


async def test_a_remote_user_redacts_an_event_of_their_own_server(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    message, message_id = await room.build("m.room.message", {"body": "oops"})
    assert await receive(hs, room, message) is Outcome.ACCEPTED
    assert await receive(hs, room, await redaction(room, message_id, message_id)) is (
        Outcome.ACCEPTED
    )
    assert await served_content(client, tok, room.room_id, message_id) == {}


async def test_redacts_is_read_where_the_room_version_puts_it(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    """Room version 12 reads `content.redacts`: a top-level `redacts` naming another event
    redacts nothing."""
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    first, first_id = await room.build("m.room.message", {"body": "one"})
    assert await receive(hs, room, first) is Outcome.ACCEPTED
    second, second_id = await room.build("m.room.message", {"body": "two"})
    assert await receive(hs, room, second) is Outcome.ACCEPTED
    assert await receive(hs, room, await redaction(room, second_id, first_id)) is (Outcome.ACCEPTED)
    assert await served_content(client, tok, room.room_id, first_id) == {"body": "one"}
    assert await served_content(client, tok, room.room_id, second_id) == {}
