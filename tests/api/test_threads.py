"""Threads: the m.thread aggregation, validation, and GET /rooms/{roomId}/threads."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import auth_header, checked, register

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


class Room:
    """A public room of alice (creator), bob and carol, all joined; dave is an outsider."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.ids: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.room_id = ""
        self._txn = 0

    async def setup(self) -> Room:
        for name in ("alice", "bob", "carol", "dave"):
            self.ids[name], self.tokens[name] = await register(self.client, name)
        r = await self.client.post(
            f"{V3}/createRoom",
            json={"preset": "public_chat"},
            headers=auth_header(self.tokens["alice"]),
        )
        self.room_id = checked(r)["room_id"]
        for name in ("bob", "carol"):
            r = await self.client.post(
                f"{V3}/join/{self.room_id}", json={}, headers=auth_header(self.tokens[name])
            )
            checked(r)
        return self

    async def send_raw(self, who: str, content: dict[str, Any]) -> httpx.Response:
        self._txn += 1
        return await self.client.put(
            f"{V3}/rooms/{self.room_id}/send/m.room.message/t{self._txn}",
            json=content,
            headers=auth_header(self.tokens[who]),
        )

    async def text(self, who: str, body: str, relates_to: dict[str, Any] | None = None) -> str:
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if relates_to is not None:
            content["m.relates_to"] = relates_to
        return str(checked(await self.send_raw(who, content))["event_id"])

    async def reply_in_thread(self, who: str, root: str, body: str) -> str:
        return await self.text(who, body, {"rel_type": "m.thread", "event_id": root})

    async def event(self, who: str, event_id: str) -> dict[str, Any]:
        r = await self.client.get(
            f"{V3}/rooms/{self.room_id}/event/{event_id}", headers=auth_header(self.tokens[who])
        )
        body: dict[str, Any] = checked(r)
        return body

    async def threads_raw(self, who: str, **params: Any) -> httpx.Response:
        return await self.client.get(
            f"{V1}/rooms/{self.room_id}/threads",
            params={k: str(v) for k, v in params.items()},
            headers=auth_header(self.tokens[who]),
        )

    async def threads(self, who: str, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = checked(await self.threads_raw(who, **params))
        return body


def thread_of(event: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = event["unsigned"]["m.relations"]["m.thread"]
    return summary


async def test_thread_summary_is_bundled(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    root = await room.text("alice", "topic")
    await room.reply_in_thread("bob", root, "first")
    latest = await room.reply_in_thread("bob", root, "second")
    r = await room.send_raw(
        "bob",
        {
            "msgtype": "m.text",
            "body": "* second!!",
            "m.new_content": {"msgtype": "m.text", "body": "second!!"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": latest},
        },
    )
    edit = checked(r)["event_id"]

    summary = thread_of(await room.event("alice", root))
    assert summary["count"] == 2
    assert summary["latest_event"]["event_id"] == latest
    assert summary["latest_event"]["room_id"] == room.room_id
    # The latest event carries its own aggregations: here, its edit.
    assert summary["latest_event"]["unsigned"]["m.relations"]["m.replace"]["event_id"] == edit
    assert summary["current_user_participated"] is True  # alice sent the root
    assert thread_of(await room.event("bob", root))["current_user_participated"] is True
    assert thread_of(await room.event("carol", root))["current_user_participated"] is False

    r = await client.get(
        f"{V3}/rooms/{room.room_id}/messages",
        params={"limit": "20"},
        headers=auth_header(room.tokens["carol"]),
    )
    chunk = {e["event_id"]: e for e in checked(r)["chunk"]}
    assert thread_of(chunk[root])["count"] == 2

    r = await client.get(
        f"{V3}/sync",
        params={"filter": '{"room":{"timeline":{"limit":20}}}'},
        headers=auth_header(room.tokens["carol"]),
    )
    timeline = checked(r)["rooms"]["join"][room.room_id]["timeline"]["events"]
    synced = next(e for e in timeline if e["event_id"] == root)
    assert thread_of(synced)["latest_event"]["event_id"] == latest
    assert "room_id" not in thread_of(synced)["latest_event"]

    # The replies themselves, through /relations.
    r = await client.get(
        f"{V1}/rooms/{room.room_id}/relations/{root}/m.thread",
        headers=auth_header(room.tokens["carol"]),
    )
    assert [e["content"]["body"] for e in checked(r)["chunk"]] == ["second", "first"]


async def test_redacted_thread_reply_leaves_the_thread(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    root = await room.text("alice", "topic")
    first = await room.reply_in_thread("bob", root, "first")
    second = await room.reply_in_thread("bob", root, "second")
    r = await client.put(
        f"{V3}/rooms/{room.room_id}/redact/{second}/r1",
        json={},
        headers=auth_header(room.tokens["bob"]),
    )
    checked(r)
    summary = thread_of(await room.event("alice", root))
    assert summary["count"] == 1
    assert summary["latest_event"]["event_id"] == first


async def test_ignored_users_are_left_out_of_the_summary(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    root = await room.text("alice", "topic")
    mine = await room.reply_in_thread("carol", root, "carol's")
    await room.reply_in_thread("bob", root, "bob's")
    r = await client.put(
        f"{V3}/user/{room.ids['carol']}/account_data/m.ignored_user_list",
        json={"ignored_users": {room.ids["bob"]: {}}},
        headers=auth_header(room.tokens["carol"]),
    )
    checked(r)
    summary = thread_of(await room.event("carol", root))
    assert summary["count"] == 1
    assert summary["latest_event"]["event_id"] == mine
    assert thread_of(await room.event("alice", root))["count"] == 2


async def test_no_thread_off_an_event_with_a_relation(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    root = await room.text("alice", "topic")
    reply = await room.reply_in_thread("bob", root, "in thread")
    # spec, "Validation of m.thread relationships": 400 M_UNKNOWN.
    r = await room.send_raw(
        "carol",
        {
            "msgtype": "m.text",
            "body": "nested",
            "m.relates_to": {"rel_type": "m.thread", "event_id": reply},
        },
    )
    checked(r, 400, "M_UNKNOWN")
    edit = await room.text("alice", "* topic", {"rel_type": "m.replace", "event_id": root})
    r = await room.send_raw(
        "carol",
        {
            "msgtype": "m.text",
            "body": "off an edit",
            "m.relates_to": {"rel_type": "m.thread", "event_id": edit},
        },
    )
    checked(r, 400, "M_UNKNOWN")
    # A plain reply (m.in_reply_to, no rel_type) can be a thread root.
    plain_reply = await room.text("bob", "> topic\n\nyes", {"m.in_reply_to": {"event_id": root}})
    await room.reply_in_thread("carol", plain_reply, "fine")


async def test_thread_list_by_latest_activity(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    roots = [await room.text("alice", f"topic {i}") for i in range(4)]
    await room.reply_in_thread("bob", roots[0], "a")
    await room.reply_in_thread("carol", roots[1], "b")
    await room.reply_in_thread("bob", roots[2], "c")
    await room.reply_in_thread("carol", roots[0], "d")  # roots[0] is the most recent now
    await room.text("alice", "no thread here")

    listed = await room.threads("bob")
    assert [e["event_id"] for e in listed["chunk"]] == [roots[0], roots[2], roots[1]]
    assert "next_batch" not in listed
    assert thread_of(listed["chunk"][0])["count"] == 2
    assert thread_of(listed["chunk"][0])["latest_event"]["content"]["body"] == "d"

    participated = await room.threads("bob", include="participated")
    assert [e["event_id"] for e in participated["chunk"]] == [roots[0], roots[2]]
    # Sending the root is participating too.
    alice_threads = await room.threads("alice", include="participated")
    assert len(alice_threads["chunk"]) == 3

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 1}
    while True:
        page = await room.threads("carol", **params)
        assert len(page["chunk"]) <= 1
        seen += [e["event_id"] for e in page["chunk"]]
        if "next_batch" not in page:
            break
        params = {"limit": 1, "from": page["next_batch"]}
    assert seen == [roots[0], roots[2], roots[1]]


async def test_thread_list_errors(client: httpx.AsyncClient) -> None:
    room = await Room(client).setup()
    root = await room.text("alice", "topic")
    await room.reply_in_thread("bob", root, "reply")
    checked(await room.threads_raw("dave"), 403, "M_FORBIDDEN")
    checked(await room.threads_raw("bob", include="mine"), 400, "M_INVALID_PARAM")
    checked(await room.threads_raw("bob", limit=0), 400, "M_INVALID_PARAM")
    checked(await room.threads_raw("bob", limit="many"), 400, "M_INVALID_PARAM")
    checked(await room.threads_raw("bob", **{"from": "page2"}), 400, "M_INVALID_PARAM")
    r = await client.get(f"{V1}/rooms/{room.room_id}/threads")
    checked(r, 401, "M_MISSING_TOKEN", documented=False)
    r = await client.get(
        f"{V1}/rooms/!nowhere:test/threads", headers=auth_header(room.tokens["bob"])
    )
    checked(r, 403, "M_FORBIDDEN")


async def test_thread_list_of_a_departed_member_stops_at_the_leave(
    client: httpx.AsyncClient,
) -> None:
    room = await Room(client).setup()
    old = await room.text("alice", "old topic")
    await room.reply_in_thread("bob", old, "before")
    r = await client.post(
        f"{V3}/rooms/{room.room_id}/leave", json={}, headers=auth_header(room.tokens["carol"])
    )
    checked(r)
    new = await room.text("alice", "new topic")
    await room.reply_in_thread("bob", new, "after")
    await room.reply_in_thread("bob", old, "after too")
    listed = await room.threads("carol")
    assert [e["event_id"] for e in listed["chunk"]] == [old]
    assert thread_of(listed["chunk"][0])["count"] == 1
