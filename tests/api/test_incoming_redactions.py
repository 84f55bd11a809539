"""Redactions from other servers (rooms/fragments/v3-handling-redactions.md): from room
version 3 the auth rules let every redaction in, and it is applied only when its sender has
the redact level or shares a server with the redacted event's sender; `redacts` is read where
the room version puts it."""

from __future__ import annotations

import httpx

from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.rooms.incoming import Outcome
from tests.api.test_federation_send import put_txn, trust, txn
from tests.api.test_incoming_pipeline import EVE, V3, public_room_with_eve
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, checked
from tests.helpers import create_room as create
from tests.incoming_helpers import RemoteRoom

OLGA = "@olga:other.test"


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


# --- a redaction that arrives before its target ------------------------------------------------


async def other_server_joins(hs: Homeserver, room_id: str, other: FakeRemote) -> RemoteRoom:
    """Olga of other.test (whose keys the homeserver holds) joins the public room."""
    await trust(hs, other)
    room = RemoteRoom(hs, room_id, other)
    join, _ = await room.build("m.room.member", {"membership": "join"}, OLGA, sender=OLGA)
    [received] = await hs.incoming_events.receive(room_id, [join], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED, received
    return room


async def early_redaction(room: RemoteRoom, target: str, head: list[str]) -> JsonDict:
    """Eve's redaction of ``target``, on ``head`` (not on the target: it comes first)."""
    pdu, _ = await room.build("m.room.redaction", {"redacts": target}, prevs=head)
    pdu["redacts"] = target
    await room.resign(pdu)
    return pdu


async def heads(hs: Homeserver, room_id: str) -> list[str]:
    return [e.event_id for e in await hs.event_store.get_forward_extremities(room_id)]


async def test_a_redaction_before_its_target_is_applied_when_the_target_arrives(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    head = await heads(hs, room.room_id)
    message, message_id = await room.build("m.room.message", {"body": "oops"}, prevs=head)
    redacting = await early_redaction(room, message_id, head)
    redaction_id = await room.resign(redacting)
    assert await receive(hs, room, redacting) is Outcome.ACCEPTED
    assert await hs.event_store.get_event(message_id) is None
    assert await receive(hs, room, message) is Outcome.ACCEPTED
    assert await served_content(client, tok, room.room_id, message_id) == {}
    stored = await hs.event_store.get_event(message_id)
    assert stored is not None and stored.redacted_by == redaction_id


async def test_an_early_redaction_keeps_the_rules_of_its_sender_server_and_power(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    """Eve (remote.test, no redact level) redacts Olga's (other.test) event before it
    arrives: not applied. Once Alice gives Eve the redact level, her next early redaction of
    Olga's event is applied: the power is judged in the state before the redaction."""
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    olga = await other_server_joins(hs, room.room_id, FakeRemote("other.test"))
    head = await heads(hs, room.room_id)
    first, first_id = await olga.build("m.room.message", {"body": "one"}, sender=OLGA, prevs=head)
    assert await receive(hs, room, await early_redaction(room, first_id, head)) is (
        Outcome.ACCEPTED
    )
    assert await receive(hs, olga, first) is Outcome.ACCEPTED
    assert await served_content(client, tok, room.room_id, first_id) == {"body": "one"}

    r = await client.get(
        f"{V3}/rooms/{room.room_id}/state/m.room.power_levels/", headers=auth_header(tok)
    )
    power = checked(r)
    power["users"] = {**power.get("users", {}), EVE: power.get("redact", 50)}
    r = await client.put(
        f"{V3}/rooms/{room.room_id}/state/m.room.power_levels/",
        json=power,
        headers=auth_header(tok),
    )
    checked(r)
    head = await heads(hs, room.room_id)
    second, second_id = await olga.build("m.room.message", {"body": "two"}, sender=OLGA, prevs=head)
    assert await receive(hs, room, await early_redaction(room, second_id, head)) is (
        Outcome.ACCEPTED
    )
    assert await receive(hs, olga, second) is Outcome.ACCEPTED
    assert await served_content(client, tok, room.room_id, second_id) == {}
    assert await served_content(client, tok, room.room_id, first_id) == {"body": "one"}


async def test_an_early_redaction_of_another_room_event_is_not_applied(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    other_room_id = await create(client, tok, preset="public_chat")
    other = RemoteRoom(hs, other_room_id, remote)
    join, _ = await other.build("m.room.member", {"membership": "join"}, EVE)
    assert await receive(hs, other, join) is Outcome.ACCEPTED
    message, message_id = await other.build("m.room.message", {"body": "elsewhere"})
    head = await heads(hs, room.room_id)
    assert await receive(hs, room, await early_redaction(room, message_id, head)) is (
        Outcome.ACCEPTED
    )
    assert await receive(hs, other, message) is Outcome.ACCEPTED
    stored = await hs.event_store.get_event(message_id)
    assert stored is not None and stored.redacted_by is None


async def test_an_early_redaction_applies_to_a_target_filled_in_from_a_gap_or_backfill(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    """The target reaches us as a missing event of a later one (get_missing_events), and
    another as history (backfill): both redacted as they are stored."""
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    head = await heads(hs, room.room_id)
    [(gap, gap_id), (after, _)] = await room.chain(2, prevs=head)
    assert await receive(hs, room, await early_redaction(room, gap_id, head)) is (Outcome.ACCEPTED)
    [received] = await hs.incoming_events.receive(
        room.room_id, [after], hs.clock.now_ms(), remote=room
    )
    assert received.outcome is Outcome.ACCEPTED
    assert "get_missing_events" in room.calls
    assert await served_content(client, tok, room.room_id, gap_id) == {}

    # History: an event on Eve's join, given by backfill after its redaction.
    join_id = (await hs.event_store.get_current_state_ids(room.room_id))[("m.room.member", EVE)]
    old, old_id = await room.build("m.room.message", {"body": "old"}, prevs=[join_id])
    head = await heads(hs, room.room_id)
    assert await receive(hs, room, await early_redaction(room, old_id, head)) is (Outcome.ACCEPTED)
    [filled] = await hs.incoming_events.receive_backfilled(
        room.room_id, [old], hs.clock.now_ms(), room
    )
    assert filled.outcome is Outcome.ACCEPTED, filled
    assert await served_content(client, tok, room.room_id, old_id) == {}


async def test_an_early_redaction_through_federation_transactions(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    """Two transactions over HTTP: the redaction first, the target in the next one."""
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    head = await heads(hs, room.room_id)
    message, message_id = await room.build("m.room.message", {"body": "later"}, prevs=head)
    redacting = await early_redaction(room, message_id, head)
    redaction_id = await room.resign(redacting)
    r = await put_txn(client, remote, "early-1", txn([redacting]))
    assert r.status_code == 200, r.text
    assert r.json()["pdus"] == {redaction_id: {}}
    r = await put_txn(client, remote, "early-2", txn([message]))
    assert r.status_code == 200, r.text
    assert r.json()["pdus"] == {message_id: {}}
    assert await served_content(client, tok, room.room_id, message_id) == {}
    # The client sees the redaction and the redacted event in /messages.
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/messages",
        params={"dir": "b", "limit": "5"},
        headers=auth_header(tok),
    )
    chunk = {e["event_id"]: e for e in checked(r)["chunk"]}
    assert chunk[message_id]["content"] == {}
    assert chunk[message_id]["unsigned"]["redacted_because"]["event_id"] == redaction_id
