"""PUT /redact: who may redact, idempotency, and what clients see of a redacted event."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import auth_header, checked, register
from tests.helpers import create_room as create

V3 = "/_matrix/client/v3"


async def send(
    client: httpx.AsyncClient,
    token: str,
    room_id: str,
    txn: str,
    content: dict[str, Any],
    event_type: str = "m.room.message",
) -> str:
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/{event_type}/{txn}", headers=auth_header(token), json=content
    )
    return str(checked(r)["event_id"])


async def redact(
    client: httpx.AsyncClient,
    token: str,
    room_id: str,
    event_id: str,
    txn: str,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    return await client.put(
        f"{V3}/rooms/{room_id}/redact/{event_id}/{txn}",
        headers=auth_header(token),
        json={} if body is None else body,
    )


async def get_event(
    client: httpx.AsyncClient, token: str, room_id: str, event_id: str
) -> dict[str, Any]:
    r = await client.get(f"{V3}/rooms/{room_id}/event/{event_id}", headers=auth_header(token))
    body: dict[str, Any] = checked(r)
    return body


async def setup_room(
    client: httpx.AsyncClient, version: str = "11"
) -> tuple[str, dict[str, str], dict[str, str]]:
    """A public room of alice (creator), bob (moderator, 50) and carol (0)."""
    ids, toks = {}, {}
    for name in ("alice", "bob", "carol"):
        ids[name], toks[name] = await register(client, name)
    room_id = await create(
        client,
        toks["alice"],
        preset="public_chat",
        room_version=version,
        power_level_content_override={"users": {ids["bob"]: 50}}
        if version == "12"
        else {"users": {ids["alice"]: 100, ids["bob"]: 50}},
    )
    for name in ("bob", "carol"):
        checked(
            await client.post(
                f"{V3}/rooms/{room_id}/join", headers=auth_header(toks[name]), json={}
            )
        )
    return room_id, ids, toks


async def test_who_may_redact(client: httpx.AsyncClient) -> None:
    room_id, ids, toks = await setup_room(client)
    mine = await send(client, toks["carol"], room_id, "c1", {"msgtype": "m.text", "body": "1"})
    theirs = await send(client, toks["alice"], room_id, "a1", {"msgtype": "m.text", "body": "2"})
    other = await send(client, toks["alice"], room_id, "a2", {"msgtype": "m.text", "body": "3"})
    # One's own event, with a reason.
    redaction = checked(
        await redact(client, toks["carol"], room_id, mine, "r1", {"reason": "typo"})
    )["event_id"]
    event = await get_event(client, toks["carol"], room_id, redaction)
    assert event["type"] == "m.room.redaction"
    assert event["content"] == {"reason": "typo", "redacts": mine}
    assert event["redacts"] == mine
    # Another's, without the redact level (50).
    r = await redact(client, toks["carol"], room_id, theirs, "r2")
    checked(r, 403, "M_FORBIDDEN", documented=False)
    assert (await get_event(client, toks["carol"], room_id, theirs))["content"]["body"] == "2"
    # A moderator may.
    checked(await redact(client, toks["bob"], room_id, theirs, "r3"))
    assert (await get_event(client, toks["carol"], room_id, theirs))["content"] == {}
    # Unknown events, events of another room, and non-members.
    r = await redact(client, toks["alice"], room_id, "$nope", "r4")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text
    elsewhere = await create(client, toks["alice"])
    in_elsewhere = await send(client, toks["alice"], elsewhere, "e1", {"body": "x"})
    r = await redact(client, toks["alice"], room_id, in_elsewhere, "r5")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text
    _, d_tok = await register(client, "dave")
    r = await redact(client, d_tok, room_id, other, "r6")
    checked(r, 403, "M_FORBIDDEN", documented=False)
    r = await redact(client, toks["alice"], room_id, other, "r7", {"reason": 5})
    checked(r, 400, "M_BAD_JSON", documented=False)


async def test_redaction_is_idempotent(client: httpx.AsyncClient) -> None:
    room_id, _, toks = await setup_room(client)
    one = await send(client, toks["carol"], room_id, "c1", {"body": "1"})
    two = await send(client, toks["carol"], room_id, "c2", {"body": "2"})
    first = checked(await redact(client, toks["carol"], room_id, one, "r1"))["event_id"]
    again = checked(await redact(client, toks["carol"], room_id, one, "r1"))["event_id"]
    assert again == first
    # The same transaction ID as a /send is another namespace; a new txn is a new event.
    other = checked(await redact(client, toks["carol"], room_id, two, "c1"))["event_id"]
    assert other != first
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        params={"limit": "100"},
        headers=auth_header(toks["carol"]),
    )
    redactions = [e for e in checked(r)["chunk"] if e["type"] == "m.room.redaction"]
    assert sorted(e["event_id"] for e in redactions) == sorted([first, other])
    mine = [e for e in redactions if e["event_id"] == first][0]
    assert mine["unsigned"]["transaction_id"] == "r1"


@pytest.mark.parametrize("version", ["10", "11"])
async def test_redacted_content_is_pruned(client: httpx.AsyncClient, version: str) -> None:
    room_id, ids, toks = await setup_room(client, version)
    a_tok = toks["alice"]
    r = await client.get(f"{V3}/sync", headers=auth_header(toks["carol"]))
    since = r.json()["next_batch"]
    message = await send(
        client,
        toks["carol"],
        room_id,
        "m",
        {"msgtype": "m.text", "body": "secret", "url": "mxc://x/y"},
    )
    r = await client.get(
        f"{V3}/rooms/{room_id}/state/m.room.power_levels/", headers=auth_header(a_tok)
    )
    pl = checked(r)
    pl["invite"] = 0
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.power_levels/", headers=auth_header(a_tok), json=pl
    )
    power_levels = checked(r)["event_id"]
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/org.example.note/",
        headers=auth_header(a_tok),
        json={"text": "note"},
    )
    note = checked(r)["event_id"]
    redactions = {}
    for i, event_id in enumerate((message, power_levels, note)):
        redactions[event_id] = checked(
            await redact(client, a_tok, room_id, event_id, f"r{i}", {"reason": "spam"})
        )["event_id"]
    expected_pl = {
        k: v
        for k, v in pl.items()
        if k
        in (
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        )
        or (k == "invite" and version == "11")
    }
    expected = {message: {}, power_levels: expected_pl, note: {}}

    def check(event: dict[str, Any]) -> None:
        event_id = event["event_id"]
        assert event["content"] == expected[event_id], (version, event)
        because = event["unsigned"]["redacted_because"]
        assert because["event_id"] == redactions[event_id]
        assert because["type"] == "m.room.redaction"
        assert because["sender"] == ids["alice"]
        assert because["content"]["reason"] == "spam"
        if version == "11":
            assert because["content"]["redacts"] == event_id
        else:
            assert because["redacts"] == event_id

    for event_id in expected:
        check(await get_event(client, toks["carol"], room_id, event_id))
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages", params={"limit": "20"}, headers=auth_header(toks["carol"])
    )
    chunk = [e for e in checked(r)["chunk"] if e["event_id"] in expected]
    assert len(chunk) == 3
    for event in chunk:
        check(event)
    r = await client.get(f"{V3}/sync", params={"since": since}, headers=auth_header(toks["carol"]))
    timeline = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
    chunk = [e for e in timeline if e["event_id"] in expected]
    assert len(chunk) == 3
    for event in chunk:
        check(event)
    # Current state shows the redacted form too.
    r = await client.get(
        f"{V3}/rooms/{room_id}/state/org.example.note/", headers=auth_header(a_tok)
    )
    assert checked(r) == {}
    # Redacting a redacted event again changes nothing for clients.
    checked(await redact(client, a_tok, room_id, message, "again"))
    check(await get_event(client, toks["carol"], room_id, message))


async def test_redacted_event_in_v12_room(client: httpx.AsyncClient) -> None:
    room_id, ids, toks = await setup_room(client, "12")
    message = await send(client, toks["alice"], room_id, "m", {"body": "x"})
    # bob (50) may redact the creator's message in v12 too.
    redaction = checked(await redact(client, toks["bob"], room_id, message, "r"))["event_id"]
    event = await get_event(client, toks["carol"], room_id, message)
    assert event["content"] == {}
    assert event["unsigned"]["redacted_because"]["event_id"] == redaction
    assert event["unsigned"]["redacted_because"]["sender"] == ids["bob"]


async def test_redacted_power_levels_authorize_in_redacted_form(client: httpx.AsyncClient) -> None:
    """Room v10 prunes `invite` from redacted power levels: the default (0) applies again."""
    ids, toks = {}, {}
    for name in ("alice", "carol", "dave"):
        ids[name], toks[name] = await register(client, name)
    room_id = await create(
        client,
        toks["alice"],
        preset="public_chat",
        room_version="10",
        power_level_content_override={"invite": 100},
    )
    r = await client.post(f"{V3}/join/{room_id}", headers=auth_header(toks["carol"]), json={})
    checked(r)
    invite = {"user_id": ids["dave"]}
    r = await client.post(
        f"{V3}/rooms/{room_id}/invite", headers=auth_header(toks["carol"]), json=invite
    )
    checked(r, 403, "M_FORBIDDEN", documented=False)
    r = await client.get(
        f"{V3}/rooms/{room_id}/state/m.room.power_levels/",
        headers=auth_header(toks["alice"]),
        params={"format": "event"},
    )
    pl_event = r.json()["event_id"]
    checked(await redact(client, toks["alice"], room_id, pl_event, "pl"))
    r = await client.post(
        f"{V3}/rooms/{room_id}/invite", headers=auth_header(toks["carol"]), json=invite
    )
    checked(r, documented=False)
