"""The admin API on rooms (/_synapse/admin/.../rooms), on both databases; a purged room is
gone from every table."""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.storage.admin_rooms import KEPT_AFTER_PURGE, AdminRoomStore
from homeserver.storage.schema import metadata
from tests.api.admin_helpers import call, make_admin, refused_to_non_admins
from tests.api.sliding_helpers import send
from tests.helpers import auth_header, create_room, register

V3 = "/_matrix/client/v3"


async def _join(client: httpx.AsyncClient, token: str, room: str, status: int = 200) -> Any:
    r = await client.post(f"{V3}/join/{room}", headers=auth_header(token), json={})
    assert r.status_code == status, r.text
    return r.json()


async def test_non_admins_are_refused(client: httpx.AsyncClient) -> None:
    bob, token = await register(client, "bob")
    room = await create_room(client, token)
    await refused_to_non_admins(
        client,
        token,
        [
            ("GET", "/v1/rooms", None),
            ("GET", f"/v1/rooms/{room}", None),
            ("GET", f"/v1/rooms/{room}/members", None),
            ("GET", f"/v1/rooms/{room}/state", None),
            ("GET", f"/v1/rooms/{room}/block", None),
            ("PUT", f"/v1/rooms/{room}/block", {"block": True}),
            ("POST", f"/v1/join/{room}", {"user_id": bob}),
            ("POST", f"/v1/rooms/{room}/make_room_admin", {}),
            ("DELETE", f"/v2/rooms/{room}", {}),
            ("DELETE", f"/v1/rooms/{room}", {}),
            ("GET", f"/v1/rooms/{room}/messages", None),
            ("GET", "/v1/fetch_event/$abc", None),
            ("POST", f"/v1/user/{bob}/redact", {"rooms": []}),
            ("GET", "/v1/user/redact_status/abc", None),
            ("GET", f"/v2/rooms/{room}/delete_status", None),
            ("GET", "/v2/rooms/delete_status/abc", None),
        ],
    )


async def test_list_search_order_and_details(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    music = await create_room(
        client,
        token,
        name="Music Theory",
        topic="Notes",
        room_alias_name="music",
        preset="public_chat",
        visibility="public",
    )
    quiet = await create_room(client, token, name="Quiet")
    await _join(client, bob_token, music)
    listed = await call(client, admin, "GET", "/v1/rooms")
    assert [r["room_id"] for r in listed["rooms"]] == [music, quiet]  # by name
    assert listed["total_rooms"] == 2 and listed["offset"] == 0
    entry = listed["rooms"][0]
    assert entry["name"] == "Music Theory" and entry["canonical_alias"] == "#music:test"
    assert entry["joined_members"] == 2 and entry["joined_local_members"] == 2
    assert entry["public"] is True and entry["join_rules"] == "public"
    assert entry["creator"] == alice and entry["federatable"] is True
    assert entry["encryption"] is None and entry["room_type"] is None
    assert entry["state_events"] >= 6
    by_size = await call(client, admin, "GET", "/v1/rooms?order_by=joined_members&dir=b")
    assert [r["room_id"] for r in by_size["rooms"]] == [quiet, music]
    page = await call(client, admin, "GET", "/v1/rooms?limit=1")
    assert page["next_batch"] == 1 and len(page["rooms"]) == 1
    page2 = await call(client, admin, "GET", "/v1/rooms?limit=1&from=1")
    assert page2["prev_batch"] == 0 and "next_batch" not in page2
    for term, found in (
        ("theory", [music]),
        ("music", [music]),
        (quiet, [quiet]),
        ("nothing-like-this", []),
    ):
        got = await call(client, admin, "GET", f"/v1/rooms?search_term={term}")
        assert [r["room_id"] for r in got["rooms"]] == found, term
    public = await call(client, admin, "GET", "/v1/rooms?public_rooms=false")
    assert [r["room_id"] for r in public["rooms"]] == [quiet]
    details = await call(client, admin, "GET", f"/v1/rooms/{music}")
    assert details["topic"] == "Notes" and details["tombstoned"] is False
    assert details["forgotten"] is False and details["replacement_room"] is None
    members = await call(client, admin, "GET", f"/v1/rooms/{music}/members")
    assert members == {"members": [alice, bob], "total": 2}
    state = (await call(client, admin, "GET", f"/v1/rooms/{music}/state"))["state"]
    assert {"m.room.create", "m.room.name", "m.room.topic"} <= {e["type"] for e in state}
    names = await call(client, admin, "GET", f"/v1/rooms/{music}/state?type=m.room.name")
    assert [e["content"]["name"] for e in names["state"]] == ["Music Theory"]
    for path, status, errcode in (
        ("/v1/rooms?order_by=colour", 400, "M_INVALID_PARAM"),
        ("/v1/rooms?dir=x", 400, "M_INVALID_PARAM"),
        ("/v1/rooms?from=-2", 400, "M_INVALID_PARAM"),
        ("/v1/rooms?limit=many", 400, "M_INVALID_PARAM"),
        ("/v1/rooms?public_rooms=perhaps", 400, "M_INVALID_PARAM"),
        ("/v1/rooms?search_term=", 400, "M_INVALID_PARAM"),
        ("/v1/rooms/!nowhere:test", 404, "M_NOT_FOUND"),
        ("/v1/rooms/nowhere", 400, "M_INVALID_PARAM"),
        ("/v1/rooms/!nowhere:test/members", 404, "M_NOT_FOUND"),
        ("/v1/rooms/!nowhere:test/state", 404, "M_NOT_FOUND"),
    ):
        await call(client, admin, "GET", path, None, status, errcode)


async def test_block_join_and_make_room_admin(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    public = await create_room(client, token, preset="public_chat", room_alias_name="open")
    private = await create_room(client, token)
    # Blocking: nobody may join; it can be lifted; unknown rooms can be blocked ahead.
    assert await call(client, admin, "GET", f"/v1/rooms/{public}/block") == {"block": False}
    await call(client, admin, "PUT", f"/v1/rooms/{public}/block", {"block": True})
    assert await call(client, admin, "GET", f"/v1/rooms/{public}/block") == {
        "block": True,
        "user_id": "@root:test",
    }
    assert (await _join(client, bob_token, public, 403))["errcode"] == "M_FORBIDDEN"
    await call(client, admin, "PUT", f"/v1/rooms/{public}/block", {"block": False})
    await call(client, admin, "PUT", "/v1/rooms/!future:test/block", {"block": True})
    await call(client, admin, "PUT", f"/v1/rooms/{public}/block", {}, 400, "M_MISSING_PARAM")
    await call(client, admin, "PUT", f"/v1/rooms/{public}/block", {"block": 1}, 400, "M_BAD_JSON")
    # Joining a user: a public room by alias; a private one needs the admin inside it.
    assert await call(client, admin, "POST", "/v1/join/%23open:test", {"user_id": bob}) == {
        "room_id": public
    }
    await call(client, admin, "POST", f"/v1/join/{private}", {"user_id": bob}, 403, "M_FORBIDDEN")
    # make_room_admin: the room's most powerful local member gives the admin its power.
    await call(client, admin, "POST", f"/v1/rooms/{private}/make_room_admin", {})
    r = await client.get(
        f"{V3}/rooms/{private}/state/m.room.power_levels", headers=auth_header(token)
    )
    assert r.json()["users"]["@root:test"] == 100
    members = await client.get(f"{V3}/rooms/{private}/members", headers=auth_header(token))
    invited = [
        e["state_key"] for e in members.json()["chunk"] if e["content"]["membership"] == "invite"
    ]
    assert invited == ["@root:test"]
    await _join(client, admin, private)
    await call(client, admin, "POST", f"/v1/join/{private}", {"user_id": bob})
    joined = await call(client, admin, "GET", f"/v1/rooms/{private}/members")
    assert bob in joined["members"]
    for path, body, status, errcode in (
        ("/v1/join/!nowhere:test", {"user_id": bob}, 404, "M_NOT_FOUND"),
        ("/v1/join/%23missing:test", {"user_id": bob}, 404, "M_NOT_FOUND"),
        ("/v1/join/nothing", {"user_id": bob}, 400, "M_INVALID_PARAM"),
        (f"/v1/join/{public}", {}, 400, "M_MISSING_PARAM"),
        (f"/v1/join/{public}", {"user_id": "@x:elsewhere"}, 400, "M_INVALID_PARAM"),
        (f"/v1/join/{public}", {"user_id": "@ghost:test"}, 404, "M_NOT_FOUND"),
        ("/v1/rooms/!nowhere:test/make_room_admin", {}, 404, "M_NOT_FOUND"),
        (f"/v1/rooms/{public}/make_room_admin", {"user_id": 5}, 400, "M_BAD_JSON"),
    ):
        await call(client, admin, "POST", path, body, status, errcode)
    assert alice


async def _rows_mentioning(hs: Homeserver, needles: set[str]) -> dict[str, int]:
    """table -> rows of it in which any text holds one of ``needles`` (every table of the
    schema, every column, read as text)."""
    found: dict[str, int] = {}
    async with hs.db.read() as conn:
        for table in metadata.sorted_tables:
            rows = (await conn.execute(sa.select(table))).all()
            hits = sum(1 for row in rows if any(n in str(v) for v in row for n in needles))
            if hits:
                found[table.name] = hits
    return found


async def test_delete_with_purge_and_replacement_room(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    admin = await make_admin(hs, client)
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    mod, _ = await register(client, "mod")
    room = await create_room(
        client, token, preset="public_chat", room_alias_name="bad", name="Bad room"
    )
    await _join(client, bob_token, room)
    event_id = await send(client, bob_token, room, "bad content")
    await send(client, token, room, "more")
    await client.post(
        f"{V3}/rooms/{room}/receipt/m.read/{event_id}", headers=auth_header(token), json={}
    )
    await client.put(
        f"{V3}/user/{alice}/rooms/{room}/tags/u.work", headers=auth_header(token), json={}
    )
    await client.post(f"{V3}/rooms/{room}/report/{event_id}", headers=auth_header(token), json={})
    other = await create_room(client, token, name="Other")
    await send(client, token, other, "stays")
    # The scan finds the room where it is kept (so its finding nothing later means something).
    before = await _rows_mentioning(hs, {room, event_id})
    assert {
        "rooms",
        "events",
        "current_state",
        "room_memberships",
        "state_groups",
        "event_edges",
        "receipts",
        "room_tags",
        "content_reports",
        "room_aliases",
        "event_forward_extremities",
    } <= set(before), before
    deleted = await call(
        client,
        admin,
        "DELETE",
        f"/v2/rooms/{room}",
        {"new_room_user_id": mod, "message": "Moved", "block": True},
    )
    await hs.admin_room_tasks.wait_for(deleted["delete_id"])
    status = await call(client, admin, "GET", f"/v2/rooms/delete_status/{deleted['delete_id']}")
    assert status["status"] == "complete", status
    shutdown = status["shutdown_room"]
    assert sorted(shutdown["kicked_users"]) == [alice, bob]
    assert shutdown["local_aliases"] == ["#bad:test"] and shutdown["failed_to_kick_users"] == []
    new_room = shutdown["new_room_id"]
    by_room = await call(client, admin, "GET", f"/v2/rooms/{room}/delete_status")
    assert [r["delete_id"] for r in by_room["results"]] == [deleted["delete_id"]]
    # Gone from every table but the deletion's status and the block.
    event_ids = {event_id}
    left = await _rows_mentioning(hs, {room, *event_ids})
    assert set(left) <= KEPT_AFTER_PURGE, left
    if hs.db.is_sqlite:
        # The full-text index (outside the schema's tables) lost the room's messages too;
        # on PostgreSQL it is an index of events' rows, gone with them.
        async with hs.db.read() as conn:
            found = (
                await conn.execute(
                    sa.text("SELECT count(*) FROM event_search WHERE event_search MATCH 'bad'")
                )
            ).scalar_one()
        assert found == 0
    # The members are in the new room, which holds the message; the alias points there.
    members = await call(client, admin, "GET", f"/v1/rooms/{new_room}/members")
    assert set(members["members"]) == {alice, bob, mod}
    r = await client.get(
        f"{V3}/rooms/{new_room}/messages?dir=b&limit=10", headers=auth_header(bob_token)
    )
    assert "Moved" in [e["content"].get("body") for e in r.json()["chunk"]]
    r = await client.get(f"{V3}/directory/room/%23bad:test")
    assert r.json()["room_id"] == new_room
    # The other room is untouched; syncs of the members still work; the room is blocked.
    assert (await call(client, admin, "GET", f"/v1/rooms/{other}"))["name"] == "Other"
    for t in (token, bob_token):
        r = await client.get(f"{V3}/sync", headers=auth_header(t))
        assert r.status_code == 200, r.text
        assert room not in r.json().get("rooms", {}).get("join", {})
    assert (await _join(client, bob_token, room, 403))["errcode"] == "M_FORBIDDEN"
    await call(client, admin, "GET", f"/v1/rooms/{room}", None, 404, "M_NOT_FOUND")


async def test_interrupted_deletion_is_taken_over(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    admin = await make_admin(hs, client)
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    # A deletion whose worker stopped half-way (its row says it is still purging).
    store = AdminRoomStore(hs.db)
    await store.add_delete_task("lost", room, clock.now_ms())
    await store.update_delete_task("lost", "purging")
    await call(client, admin, "DELETE", f"/v2/rooms/{room}", {}, 400, "M_UNKNOWN")
    clock.advance(2 * 3600 * 1000)
    deleted = await call(client, admin, "DELETE", f"/v2/rooms/{room}", {})
    await hs.admin_room_tasks.wait_for(deleted["delete_id"])
    results = (await call(client, admin, "GET", f"/v2/rooms/{room}/delete_status"))["results"]
    assert [(r["delete_id"], r["status"]) for r in results] == [
        ("lost", "failed"),
        (deleted["delete_id"], "complete"),
    ]


async def test_delete_without_purge_and_bad_requests(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    admin = await make_admin(hs, client)
    alice, token = await register(client, "alice")
    room = await create_room(client, token)
    deleted = await call(client, admin, "DELETE", f"/v2/rooms/{room}", {"purge": False})
    await hs.admin_room_tasks.wait_for(deleted["delete_id"])
    status = await call(client, admin, "GET", f"/v2/rooms/delete_status/{deleted['delete_id']}")
    assert status["status"] == "complete" and status["shutdown_room"]["kicked_users"] == [alice]
    # Not purged: still listed, nobody in it.
    assert (await call(client, admin, "GET", f"/v1/rooms/{room}"))["joined_members"] == 0
    # v1 answers once done, with what v2's status holds.
    other = await create_room(client, token)
    done = await call(client, admin, "DELETE", f"/v1/rooms/{other}", {"block": True})
    assert done["kicked_users"] == [alice] and done["new_room_id"] is None
    await call(client, admin, "GET", f"/v1/rooms/{other}", None, 404, "M_NOT_FOUND")
    await call(client, admin, "DELETE", f"/v1/rooms/{other}", {}, 404, "M_NOT_FOUND")
    # An unknown room can only be blocked ahead.
    ahead = await call(client, admin, "DELETE", "/v2/rooms/!unknown:test", {"block": True})
    status = await call(client, admin, "GET", f"/v2/rooms/delete_status/{ahead['delete_id']}")
    assert status["status"] == "complete"
    assert (await call(client, admin, "GET", "/v1/rooms/!unknown:test/block"))["block"] is True
    for path, body, status_code, errcode in (
        ("/v2/rooms/!unknown2:test", {}, 404, "M_NOT_FOUND"),
        (f"/v2/rooms/{room}", {"purge": "yes"}, 400, "M_BAD_JSON"),
        (f"/v2/rooms/{room}", {"new_room_user_id": "nobody"}, 400, "M_INVALID_PARAM"),
        (f"/v2/rooms/{room}", {"new_room_user_id": "@x:elsewhere"}, 400, "M_INVALID_PARAM"),
        (f"/v2/rooms/{room}", {"new_room_user_id": "@ghost:test"}, 404, "M_NOT_FOUND"),
        ("/v2/rooms/not-a-room", {}, 400, "M_INVALID_PARAM"),
    ):
        await call(client, admin, "DELETE", path, body, status_code, errcode)
    await call(client, admin, "GET", "/v2/rooms/delete_status/nope", None, 404, "M_NOT_FOUND")
    await call(client, admin, "GET", "/v2/rooms/!none:test/delete_status", None, 404, "M_NOT_FOUND")


async def test_messages_of_a_room_the_admin_is_not_in(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    admin = await make_admin(hs, client)
    _, token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    room = await create_room(client, token, preset="private_chat")
    texts = [f"m{n}" for n in range(5)]
    for text in texts:
        await send(client, token, room, text)
    await call(client, bob_token, "GET", f"/v1/rooms/{room}/messages", None, 403, "M_FORBIDDEN")

    def bodies(page: Any) -> list[str]:
        return [e["content"]["body"] for e in page["chunk"] if e["type"] == "m.room.message"]

    newest = await call(client, admin, "GET", f"/v1/rooms/{room}/messages?dir=b&limit=3")
    assert bodies(newest) == ["m4", "m3", "m2"] and "end" in newest
    older = await call(
        client, admin, "GET", f"/v1/rooms/{room}/messages?dir=b&limit=3&from={newest['end']}"
    )
    assert bodies(older)[:2] == ["m1", "m0"]
    forwards = await call(client, admin, "GET", f"/v1/rooms/{room}/messages?limit=100")
    assert bodies(forwards) == texts and "end" not in forwards
    assert forwards["chunk"][0]["type"] == "m.room.create"
    only = await call(
        client,
        admin,
        "GET",
        f"/v1/rooms/{room}/messages?limit=100&filter=%7B%22types%22%3A%5B%22m.room.create%22%5D%7D",
    )
    assert [e["type"] for e in only["chunk"]] == ["m.room.create"]
    for query, status, errcode in (
        ("dir=x", 400, "M_INVALID_PARAM"),
        ("from=nonsense", 400, "M_INVALID_PARAM"),
        ("limit=-1", 400, "M_INVALID_PARAM"),
        ("filter=%5B%5D", 400, "M_BAD_JSON"),
        ("filter=notjson", 400, "M_BAD_JSON"),
    ):
        await call(
            client, admin, "GET", f"/v1/rooms/{room}/messages?{query}", None, status, errcode
        )
    await call(client, admin, "GET", "/v1/rooms/!nowhere:test/messages", None, 404, "M_NOT_FOUND")


async def test_fetch_event(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    event_id = await send(client, token, room, "secret")
    await call(client, token, "GET", f"/v1/fetch_event/{event_id}", None, 403, "M_FORBIDDEN")
    event = (await call(client, admin, "GET", f"/v1/fetch_event/{event_id}"))["event"]
    assert event["content"]["body"] == "secret" and event["room_id"] == room
    assert "signatures" in event and "hashes" in event
    await call(client, admin, "GET", "/v1/fetch_event/$unknown", None, 404, "M_NOT_FOUND")
    await call(client, admin, "GET", "/v1/fetch_event/nonsense", None, 400, "M_INVALID_PARAM")


async def test_redact_a_users_events(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    admin = await make_admin(hs, client)
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    first = await create_room(client, token, preset="public_chat")
    second = await create_room(client, token, preset="public_chat")
    for room in (first, second):
        await _join(client, bob_token, room)
    old = await send(client, bob_token, first, "old spam")
    clock.advance(60_000)
    cutoff = clock.now_ms()
    spam = [await send(client, bob_token, first, f"spam {n}") for n in range(2)]
    other = await send(client, bob_token, second, "more spam")
    hers = await send(client, token, first, "not spam")
    await call(
        client, bob_token, "POST", f"/v1/user/{bob}/redact", {"rooms": []}, 403, "M_FORBIDDEN"
    )

    async def content_of(room: str, event_id: str) -> dict[str, Any]:
        r = await client.get(f"{V3}/rooms/{room}/event/{event_id}", headers=auth_header(token))
        assert r.status_code == 200, r.text
        content: dict[str, Any] = r.json()["content"]
        return content

    # In one room, from a time on: the older message stays.
    started = await call(
        client,
        admin,
        "POST",
        f"/v1/user/{bob}/redact",
        {"rooms": [first], "after_ts": cutoff, "reason": "spam"},
    )
    await hs.admin_room_tasks.wait_for(started["redact_id"])
    status = await call(client, admin, "GET", f"/v1/user/redact_status/{started['redact_id']}")
    assert status == {"status": "completed", "failed_redactions": {}}
    for event_id in spam:
        assert await content_of(first, event_id) == {}
    assert (await content_of(first, old))["body"] == "old spam"
    assert (await content_of(second, other))["body"] == "more spam"
    assert (await content_of(first, hers))["body"] == "not spam"
    # Every room: the rest goes; joins and other state stay.
    everything = await call(client, admin, "POST", f"/v1/user/{bob}/redact", {"rooms": []})
    await hs.admin_room_tasks.wait_for(everything["redact_id"])
    assert (await call(client, admin, "GET", f"/v1/user/redact_status/{everything['redact_id']}"))[
        "status"
    ] == "completed"
    assert await content_of(first, old) == {} and await content_of(second, other) == {}
    members = await call(client, admin, "GET", f"/v1/rooms/{first}/members")
    assert bob in members["members"]
    # As the administrator, who is in neither room: the room refuses each one.
    late = await send(client, bob_token, second, "late spam")
    by_admin = await call(
        client, admin, "POST", f"/v1/user/{bob}/redact", {"rooms": [second], "use_admin": True}
    )
    await hs.admin_room_tasks.wait_for(by_admin["redact_id"])
    status = await call(client, admin, "GET", f"/v1/user/redact_status/{by_admin['redact_id']}")
    assert status["status"] == "completed" and set(status["failed_redactions"]) == {late}
    for path, body, code, errcode in (
        (f"/v1/user/{bob}/redact", {}, 400, "M_MISSING_PARAM"),
        (f"/v1/user/{bob}/redact", {"rooms": "all"}, 400, "M_BAD_JSON"),
        (f"/v1/user/{bob}/redact", {"rooms": ["nope"]}, 400, "M_INVALID_PARAM"),
        (f"/v1/user/{bob}/redact", {"rooms": ["!nowhere:test"]}, 404, "M_NOT_FOUND"),
        (f"/v1/user/{bob}/redact", {"rooms": [], "limit": 0}, 400, "M_BAD_JSON"),
        ("/v1/user/nobody/redact", {"rooms": []}, 400, "M_INVALID_PARAM"),
    ):
        await call(client, admin, "POST", path, body, code, errcode)
    await call(client, admin, "GET", "/v1/user/redact_status/unknown", None, 404, "M_NOT_FOUND")
    assert alice


# Each order_by and which way is "largest first" (as Synapse): the list is read in pages
# and must equal the rooms ordered by that field, rooms without it last (first, reversed),
# ties by room ID.
LARGEST_FIRST = {"joined_members", "size", "joined_local_members", "version", "state_events"}
ORDER_FIELDS = {
    "name": "name",
    "alphabetical": "name",
    "canonical_alias": "canonical_alias",
    "joined_members": "joined_members",
    "size": "joined_members",
    "joined_local_members": "joined_local_members",
    "version": "version",
    "creator": "creator",
    "encryption": "encryption",
    "federatable": "federatable",
    "public": "public",
    "join_rules": "join_rules",
    "guest_access": "guest_access",
    "history_visibility": "history_visibility",
    "state_events": "state_events",
}


def _expected(entries: list[dict[str, Any]], field: str, descending: bool) -> list[str]:
    present = sorted(
        (e for e in entries if e[field] is not None),
        key=lambda e: (e[field], e["room_id"]) if not descending else e["room_id"],
    )
    if descending:  # by the field, largest first, ties still by room ID
        present = sorted(present, key=lambda e: e[field], reverse=True)
    missing = sorted(e["room_id"] for e in entries if e[field] is None)
    ids = [e["room_id"] for e in present]
    return missing + ids if descending else ids + missing


async def test_list_orders_and_pages_in_sql(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    alice, token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    _, carol_token = await register(client, "carol")
    rooms = [
        await create_room(
            client,
            token,
            name="beta",
            room_alias_name="zeta",
            preset="public_chat",
            visibility="public",
        ),
        await create_room(
            client,
            bob_token,
            name="Alpha",  # upper case sorts before lower case (by code point)
            initial_state=[
                {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                {"type": "m.room.guest_access", "content": {"guest_access": "can_join"}},
            ],
        ),
        await create_room(
            client,
            carol_token,
            room_version="10",
            creation_content={"m.federate": False},
            initial_state=[
                {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}
            ],
        ),
        await create_room(
            client, token, name="100%_off", room_alias_name="sale", preset="public_chat"
        ),
        await create_room(client, token, name="beta"),  # a tie with the first by name
    ]
    for joiner in (bob_token, carol_token):
        await _join(client, joiner, rooms[0])
    await _join(client, carol_token, rooms[3])

    everything = await call(client, admin, "GET", "/v1/rooms?limit=100")
    entries = everything["rooms"]
    assert everything["total_rooms"] == len(rooms) and {e["room_id"] for e in entries} == set(rooms)
    by_id = {e["room_id"]: e for e in entries}
    assert by_id[rooms[2]]["name"] is None
    assert by_id[rooms[2]]["federatable"] is False and by_id[rooms[2]]["version"] == "10"
    # Names by code point, nameless last; the tie by room ID.
    named = sorted(rooms[i] for i in (0, 4))
    assert [e["room_id"] for e in entries][:4] == [rooms[3], rooms[1], *named]

    for order_by, field in ORDER_FIELDS.items():
        for direction in ("f", "b"):
            descending = (order_by in LARGEST_FIRST) != (direction == "b")
            want = _expected(entries, field, descending)
            got: list[str] = []
            start = 0
            while True:
                page = await call(
                    client,
                    admin,
                    "GET",
                    f"/v1/rooms?order_by={order_by}&dir={direction}&limit=2&from={start}",
                )
                assert page["total_rooms"] == len(rooms)
                got.extend(r["room_id"] for r in page["rooms"])
                if "next_batch" not in page:
                    break
                start = page["next_batch"]
            assert got == want, (order_by, direction, [by_id[i][field] for i in got])

    # Filters in SQL: LIKE wildcards in the term are literal; the alias' localpart counts,
    # without its server name; filters combine, and the total counts what they let through.
    for term, found in (
        ("%", [rooms[3]]),
        ("_off", [rooms[3]]),
        ("ZETA", [rooms[0]]),
        ("SALE", [rooms[3]]),
        ("zeta:", []),  # the localpart only
        ("ALPHA", [rooms[1]]),
    ):
        got = await call(client, admin, "GET", f"/v1/rooms?search_term={term}")
        assert [r["room_id"] for r in got["rooms"]] == found, term
        assert got["total_rooms"] == len(found)
    public = await call(client, admin, "GET", "/v1/rooms?public_rooms=true&search_term=beta")
    assert [r["room_id"] for r in public["rooms"]] == [rooms[0]]
    # A room everyone left is empty.
    await client.post(f"{V3}/rooms/{rooms[2]}/leave", headers=auth_header(carol_token), json={})
    empty = await call(client, admin, "GET", "/v1/rooms?empty_rooms=true")
    assert [r["room_id"] for r in empty["rooms"]] == [rooms[2]] and empty["total_rooms"] == 1
    full = await call(client, admin, "GET", "/v1/rooms?empty_rooms=false&order_by=size")
    assert full["total_rooms"] == len(rooms) - 1
    assert full["rooms"][0]["room_id"] == rooms[0]
