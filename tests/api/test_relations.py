"""Relations: edits, reactions and references; GET /relations; bundled aggregations."""

from __future__ import annotations

from typing import Any

import httpx

from homeserver.core.clock import FakeClock
from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


def checked(r: httpx.Response, status: int = 200, errcode: str | None = None) -> Any:
    assert r.status_code == status, r.text
    body = r.json()
    if errcode is not None:
        assert body["errcode"] == errcode, r.text
    assert_response_matches(r.request.method, r.request.url.raw_path.decode(), status, body)
    return body


class Room:
    """A room of alice (creator) and bob, both joined; carol is registered, not a member."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.ids: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.room_id = ""
        self._txn = 0

    async def setup(self, **create: Any) -> Room:
        for name in ("alice", "bob", "carol"):
            self.ids[name], self.tokens[name] = await register(self.client, name)
        body = {"preset": "public_chat", **create}
        r = await self.client.post(
            f"{V3}/createRoom", json=body, headers=auth_header(self.tokens["alice"])
        )
        self.room_id = checked(r)["room_id"]
        r = await self.client.post(
            f"{V3}/join/{self.room_id}", json={}, headers=auth_header(self.tokens["bob"])
        )
        checked(r)
        return self

    async def send_raw(
        self, who: str, content: dict[str, Any], event_type: str = "m.room.message"
    ) -> httpx.Response:
        self._txn += 1
        return await self.client.put(
            f"{V3}/rooms/{self.room_id}/send/{event_type}/t{self._txn}",
            json=content,
            headers=auth_header(self.tokens[who]),
        )

    async def send(
        self, who: str, content: dict[str, Any], event_type: str = "m.room.message"
    ) -> str:
        return str(checked(await self.send_raw(who, content, event_type))["event_id"])

    async def text(self, who: str, body: str) -> str:
        return await self.send(who, {"msgtype": "m.text", "body": body})

    async def edit(self, who: str, target: str, body: str) -> str:
        return await self.send(
            who,
            {
                "msgtype": "m.text",
                "body": f"* {body}",
                "m.new_content": {"msgtype": "m.text", "body": body},
                "m.relates_to": {"rel_type": "m.replace", "event_id": target},
            },
        )

    async def react_raw(self, who: str, target: str, key: str) -> httpx.Response:
        return await self.send_raw(
            who,
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}},
            "m.reaction",
        )

    async def redact(self, who: str, event_id: str) -> None:
        self._txn += 1
        r = await self.client.put(
            f"{V3}/rooms/{self.room_id}/redact/{event_id}/r{self._txn}",
            json={},
            headers=auth_header(self.tokens[who]),
        )
        checked(r)

    async def event(self, who: str, event_id: str) -> dict[str, Any]:
        r = await self.client.get(
            f"{V3}/rooms/{self.room_id}/event/{event_id}", headers=auth_header(self.tokens[who])
        )
        body: dict[str, Any] = checked(r)
        return body

    async def relations_raw(
        self, who: str, event_id: str, *path: str, **params: Any
    ) -> httpx.Response:
        suffix = "".join(f"/{p}" for p in path)
        return await self.client.get(
            f"{V1}/rooms/{self.room_id}/relations/{event_id}{suffix}",
            params={k: str(v) for k, v in params.items()},
            headers=auth_header(self.tokens[who]),
        )

    async def relations(self, who: str, event_id: str, *path: str, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = checked(await self.relations_raw(who, event_id, *path, **params))
        return body


def relations_of(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = event["unsigned"].get("m.relations", {})
    return found


async def test_latest_edit_by_the_sender_is_bundled_everywhere(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    room = await Room(client).setup()
    original = await room.text("alice", "helo")
    clock.advance(1000)
    first = await room.edit("alice", original, "hello")
    clock.advance(1000)
    latest = await room.edit("alice", original, "hello!")
    clock.advance(1000)
    # Someone else's "edit" is not one (spec: "Validity of replacement events").
    await room.edit("bob", original, "hijacked")

    event = await room.event("bob", original)
    edit = relations_of(event)["m.replace"]
    assert edit["event_id"] == latest
    assert edit["content"]["m.new_content"]["body"] == "hello!"
    assert edit["sender"] == room.ids["alice"]
    assert event["content"]["body"] == "helo"  # the server never replaces the content

    r = await client.get(
        f"{V3}/rooms/{room.room_id}/messages",
        params={"limit": "10"},
        headers=auth_header(room.tokens["bob"]),
    )
    chunk = {e["event_id"]: e for e in checked(r)["chunk"]}
    assert relations_of(chunk[original])["m.replace"]["event_id"] == latest
    assert "m.relations" not in chunk[first]["unsigned"]

    r = await client.get(f"{V3}/sync", headers=auth_header(room.tokens["alice"]))
    timeline = checked(r)["rooms"]["join"][room.room_id]["timeline"]["events"]
    synced = next(e for e in timeline if e["event_id"] == original)
    assert relations_of(synced)["m.replace"]["event_id"] == latest
    assert "room_id" not in relations_of(synced)["m.replace"]  # sync's format throughout

    r = await client.get(
        f"{V3}/rooms/{room.room_id}/context/{original}", headers=auth_header(room.tokens["alice"])
    )
    assert relations_of(checked(r)["event"])["m.replace"]["event_id"] == latest


async def test_redactions_break_edits(client: httpx.AsyncClient, clock: FakeClock) -> None:
    room = await Room(client).setup()
    original = await room.text("alice", "one")
    clock.advance(10)
    first = await room.edit("alice", original, "two")
    clock.advance(10)
    second = await room.edit("alice", original, "three")
    await room.redact("alice", second)
    assert relations_of(await room.event("alice", original))["m.replace"]["event_id"] == first
    assert [e["event_id"] for e in (await room.relations("alice", original))["chunk"]] == [first]
    # A redacted original carries no edit, whatever its edits became.
    await room.redact("alice", original)
    assert "m.replace" not in relations_of(await room.event("alice", original))


async def test_edit_without_new_content_or_of_an_edit_is_ignored(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    original = await room.text("alice", "one")
    await room.send(
        "alice",
        {
            "msgtype": "m.text",
            "body": "* two",
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        },
    )
    assert "m.relations" not in (await room.event("alice", original))["unsigned"]
    edit = await room.edit("alice", original, "three")
    await room.edit("alice", edit, "four")  # an edit of an edit: not valid
    assert relations_of(await room.event("alice", original))["m.replace"]["event_id"] == edit
    assert "m.relations" not in (await room.event("alice", edit))["unsigned"]


async def test_one_annotation_per_user_key_and_type(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    target = await room.text("alice", "vote")
    first = checked(await room.react_raw("bob", target, "👍"))["event_id"]
    checked(await room.react_raw("bob", target, "👍"), 400, "M_DUPLICATE_ANNOTATION")
    # Another key, another user, or another event type are different annotations.
    checked(await room.react_raw("bob", target, "👎"))
    checked(await room.react_raw("alice", target, "👍"))
    await room.send(
        "bob",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "👍"}},
        "org.example.vote",
    )
    # Once redacted, the annotation may be sent again.
    await room.redact("bob", first)
    checked(await room.react_raw("bob", target, "👍"))
    # spec: annotations are not aggregated by the server.
    assert "m.annotation" not in relations_of(await room.event("alice", target))


async def test_references_are_bundled_as_a_chunk(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    target = await room.text("alice", "poll")
    ref_ids = [
        await room.send(
            who,
            {
                "msgtype": "m.text",
                "body": "ref",
                "m.relates_to": {"rel_type": "m.reference", "event_id": target},
            },
        )
        for who in ("bob", "alice")
    ]
    bundled = relations_of(await room.event("bob", target))
    assert bundled["m.reference"] == {"chunk": [{"event_id": i} for i in ref_ids]}


async def test_relations_filters_by_rel_type_and_event_type(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    target = await room.text("alice", "parent")
    reaction = checked(await room.react_raw("bob", target, "x"))["event_id"]
    edit = await room.edit("alice", target, "parent!")
    reference = await room.send(
        "bob", {"m.relates_to": {"rel_type": "m.reference", "event_id": target}}, "org.example.ref"
    )
    await room.text("bob", "unrelated")

    everything = await room.relations("bob", target)
    assert [e["event_id"] for e in everything["chunk"]] == [reference, edit, reaction]
    assert "next_batch" not in everything and "recursion_depth" not in everything
    by_type = await room.relations("bob", target, "m.annotation")
    assert [e["event_id"] for e in by_type["chunk"]] == [reaction]
    by_both = await room.relations("bob", target, "m.reference", "org.example.ref")
    assert [e["event_id"] for e in by_both["chunk"]] == [reference]
    assert (await room.relations("bob", target, "m.reference", "m.room.message"))["chunk"] == []
    # Children get their own bundles: the edit is not edited, but a child could be.
    assert everything["chunk"][0]["room_id"] == room.room_id


async def test_relations_pagination_has_no_gap_or_duplicate(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    target = await room.text("alice", "react to me")
    children = [
        checked(await room.react_raw(who, target, str(k)))["event_id"]
        for k in range(4)
        for who in ("alice", "bob")
    ]
    await room.text("alice", "noise")

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    pages = 0
    while True:
        page = await room.relations("bob", target, **params)
        pages += 1
        seen += [e["event_id"] for e in page["chunk"]]
        if "next_batch" not in page:
            break
        assert page.get("prev_batch") == params.get("from")
        params = {"limit": 3, "from": page["next_batch"]}
    assert seen == list(reversed(children))
    assert pages == 3

    seen = []
    params = {"limit": 5, "dir": "f"}
    while True:
        page = await room.relations("bob", target, **params)
        seen += [e["event_id"] for e in page["chunk"]]
        if "next_batch" not in page:
            break
        params = {"limit": 5, "dir": "f", "from": page["next_batch"]}
    assert seen == children

    # `to` stops at a token from an earlier page: from page 1's start to page 2's end.
    first = await room.relations("bob", target, limit=2)
    second = await room.relations("bob", target, limit=2, **{"from": first["next_batch"]})
    bounded = await room.relations("bob", target, to=second["next_batch"])
    assert [e["event_id"] for e in bounded["chunk"]] == list(reversed(children))[:4]
    # A /messages token is a valid starting point too.
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/messages",
        params={"limit": "1"},
        headers=auth_header(room.tokens["bob"]),
    )
    from_messages = await room.relations("bob", target, **{"from": checked(r)["end"]})
    assert [e["event_id"] for e in from_messages["chunk"]] == list(reversed(children))


async def test_recurse_follows_relations_of_relations(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    root = await room.text("alice", "root")
    level1 = await room.send(
        "bob",
        {
            "msgtype": "m.text",
            "body": "1",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        },
    )
    level2 = checked(await room.react_raw("alice", level1, "2"))["event_id"]
    level2b = await room.edit("bob", level1, "1!")
    # A reaction to a reaction is silly, but it is a relation, three levels down.
    level3 = checked(await room.react_raw("bob", level2, "3"))["event_id"]
    level4 = checked(await room.react_raw("alice", level3, "4"))["event_id"]

    direct = await room.relations("alice", root, recurse="false")
    assert [e["event_id"] for e in direct["chunk"]] == [level1]
    assert direct["recursion_depth"] == 1
    deep = await room.relations("alice", root, recurse="true")
    assert [e["event_id"] for e in deep["chunk"]] == [level3, level2b, level2, level1]
    assert level4 not in {e["event_id"] for e in deep["chunk"]}
    assert deep["recursion_depth"] == 3
    # The filter applies at every level: annotations reached only through the thread event
    # (not an annotation) are not included.
    filtered = await room.relations("alice", root, "m.annotation", recurse="true")
    assert filtered["chunk"] == []
    threads = await room.relations("alice", root, "m.thread", recurse="true")
    assert [e["event_id"] for e in threads["chunk"]] == [level1]


async def test_relations_errors(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    target = await room.text("alice", "x")
    checked(await room.relations_raw("bob", "$unknown"), 404, "M_NOT_FOUND")
    # Not a member: the endpoint documents 404 for events the user may not read.
    checked(await room.relations_raw("carol", target), 404, "M_NOT_FOUND")
    for params, errcode in (
        ({"dir": "up"}, "M_INVALID_PARAM"),
        ({"limit": "ten"}, "M_INVALID_PARAM"),
        ({"limit": "0"}, "M_INVALID_PARAM"),
        ({"from": "yesterday"}, "M_INVALID_PARAM"),
        ({"to": "s1_x"}, "M_INVALID_PARAM"),
        ({"recurse": "maybe"}, "M_INVALID_PARAM"),
    ):
        r = await room.relations_raw("bob", target, **params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["errcode"] == errcode
    r = await client.get(f"{V1}/rooms/{room.room_id}/relations/{target}")
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"
    r = await client.get(
        f"{V1}/rooms/not-a-room/relations/{target}", headers=auth_header(room.tokens["bob"])
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"

    # An event of another room is not found through this one.
    r = await client.post(f"{V3}/createRoom", json={}, headers=auth_header(room.tokens["bob"]))
    other_room = checked(r)["room_id"]
    r = await client.put(
        f"{V3}/rooms/{other_room}/send/m.room.message/o1",
        json={"msgtype": "m.text", "body": "elsewhere"},
        headers=auth_header(room.tokens["bob"]),
    )
    elsewhere = checked(r)["event_id"]
    checked(await room.relations_raw("bob", elsewhere), 404, "M_NOT_FOUND")
    # ... and a child in another room does not count towards this room's parent.
    r = await client.put(
        f"{V3}/rooms/{other_room}/send/m.reaction/o2",
        json={"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "x"}},
        headers=auth_header(room.tokens["bob"]),
    )
    checked(r)
    assert (await room.relations("bob", target))["chunk"] == []


async def test_relations_respect_history_visibility(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup(
        initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}
        ]
    )
    early = await room.text("alice", "before carol")
    r = await client.post(
        f"{V3}/join/{room.room_id}", json={}, headers=auth_header(room.tokens["carol"])
    )
    checked(r)
    later = await room.text("alice", "after carol")
    checked(await room.relations_raw("carol", early), 404, "M_NOT_FOUND")
    await room.react_raw("bob", later, "hi")
    assert len((await room.relations("carol", later))["chunk"]) == 1
    # Carol leaves: what happens after is not hers to see.
    r = await client.post(
        f"{V3}/rooms/{room.room_id}/leave", json={}, headers=auth_header(room.tokens["carol"])
    )
    checked(r)
    await room.react_raw("alice", later, "bye")
    assert len((await room.relations("carol", later))["chunk"]) == 1
    assert len((await room.relations("bob", later))["chunk"]) == 2


async def test_encrypted_edit_is_bundled_without_cleartext_new_content(
    client: httpx.AsyncClient,
) -> None:
    room = await Room(client).setup()
    encrypted = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEn...",
        "device_id": "DEV",
        "session_id": "S",
        "sender_key": "K",
    }
    original = await room.send("alice", encrypted, "m.room.encrypted")
    edit = await room.send(
        "alice",
        {**encrypted, "m.relates_to": {"rel_type": "m.replace", "event_id": original}},
        "m.room.encrypted",
    )
    assert relations_of(await room.event("bob", original))["m.replace"]["event_id"] == edit
    # An edit must keep the original's type.
    await room.send(
        "alice",
        {
            "msgtype": "m.text",
            "body": "* x",
            "m.new_content": {"msgtype": "m.text", "body": "x"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        },
    )
    assert relations_of(await room.event("bob", original))["m.replace"]["event_id"] == edit
