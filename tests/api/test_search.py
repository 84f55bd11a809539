"""Server-side search (spec: POST /search), on SQLite (FTS5) and PostgreSQL (tsvector)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from tests.helpers import assert_errors, auth_header, checked, create_room, register

SEARCH = "/_matrix/client/v3/search"


async def send(client: httpx.AsyncClient, token: str, room: str, body: str, **extra: Any) -> str:
    content = {"msgtype": "m.text", "body": body, **extra}
    txn = str(abs(hash((room, body, str(extra)))))
    r = await client.put(
        f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/{txn}",
        headers=auth_header(token),
        json=content,
    )
    return str(checked(r)["event_id"])


async def join(client: httpx.AsyncClient, token: str, room: str) -> None:
    r = await client.post(f"/_matrix/client/v3/join/{quote(room)}", headers=auth_header(token))
    checked(r)


async def search(
    client: httpx.AsyncClient,
    token: str,
    term: str,
    next_batch: str | None = None,
    **criteria: Any,
) -> dict[str, Any]:
    url = SEARCH + (f"?next_batch={quote(next_batch)}" if next_batch else "")
    body = {"search_categories": {"room_events": {"search_term": term, **criteria}}}
    r = await client.post(url, headers=auth_header(token), json=body)
    result: dict[str, Any] = checked(r)["search_categories"]["room_events"]
    return result


def bodies(result: dict[str, Any]) -> list[str]:
    return [r["result"]["content"]["body"] for r in result["results"]]


async def test_finds_words_ranked_with_count_and_highlights(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token, name="Garden")
    await send(client, token, room, "the cat sat on the mat")
    await send(client, token, room, "a dog barked")
    await send(client, token, room, "cats and more cats, cats everywhere")
    await send(client, token, room, "nothing to see")
    result = await search(client, token, "cat")
    assert result["count"] == 2
    assert "cat" in result["highlights"]
    # The event that says it most ranks first (stemming: "cats" is "cat").
    assert bodies(result) == ["cats and more cats, cats everywhere", "the cat sat on the mat"]
    ranks = [r["rank"] for r in result["results"]]
    assert ranks[0] > ranks[1] > 0
    assert result["results"][0]["result"]["room_id"] == room
    assert "next_batch" not in result
    # Every word is needed, each as a prefix.
    assert bodies(await search(client, token, "cat mat")) == ["the cat sat on the mat"]
    assert bodies(await search(client, token, "bark")) == ["a dog barked"]
    assert (await search(client, token, "elephant"))["results"] == []
    # Punctuation is no syntax: nothing but words is searched for.
    assert bodies(await search(client, token, 'dog" * (:')) == ["a dog barked"]
    assert (await search(client, token, "!!! ..."))["results"] == []


async def test_recent_order_and_pagination(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    for i in range(7):
        await send(client, token, room, f"report number {i}" + " report" * (i % 3))
    seen: list[str] = []
    next_batch = None
    pages = 0
    while True:
        result = await search(
            client, token, "report", next_batch, order_by="recent", filter={"limit": 3}
        )
        assert result["count"] == 7
        seen += bodies(result)
        pages += 1
        next_batch = result.get("next_batch")
        if next_batch is None:
            break
    assert pages == 3
    assert [int(b.split()[2]) for b in seen] == [6, 5, 4, 3, 2, 1, 0]
    # Rank order pages too: every event once, best first.
    ranked: list[dict[str, Any]] = []
    next_batch = None
    while True:
        result = await search(client, token, "report", next_batch, filter={"limit": 2})
        ranked += result["results"]
        next_batch = result.get("next_batch")
        if next_batch is None:
            break
    assert sorted(r["result"]["content"]["body"] for r in ranked) == sorted(seen)
    ranks = [r["rank"] for r in ranked]
    assert ranks == sorted(ranks, reverse=True)
    assert ranked[0]["result"]["content"]["body"].count("report") == 3


async def test_history_visibility_and_membership(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    bob_id, bob = await register(client, "bob")
    _, carol = await register(client, "carol")
    # "joined": bob sees nothing from before he joined.
    room = await create_room(
        client,
        alice,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }
        ],
    )
    await send(client, alice, room, "secret plans before bob")
    await join(client, bob, room)
    await send(client, alice, room, "secret plans after bob")
    assert bodies(await search(client, bob, "secret")) == ["secret plans after bob"]
    assert len(bodies(await search(client, alice, "secret"))) == 2
    # Not joined: nothing, even in a public room.
    assert (await search(client, carol, "secret"))["results"] == []
    # A room bob left is not searched.
    await client.post(f"/_matrix/client/v3/rooms/{quote(room)}/leave", headers=auth_header(bob))
    assert (await search(client, bob, "secret"))["results"] == []
    assert bob_id.startswith("@bob")


async def test_redacted_and_encrypted_events_are_not_found(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    event_id = await send(client, token, room, "embarrassing typo")
    await send(client, token, room, "embarrassing but kept")
    r = await client.put(
        f"/_matrix/client/v3/rooms/{quote(room)}/redact/{quote(event_id)}/t1",
        headers=auth_header(token),
        json={},
    )
    checked(r)
    result = await search(client, token, "embarrassing")
    assert bodies(result) == ["embarrassing but kept"]
    assert result["count"] == 1
    encrypted = await create_room(
        client,
        token,
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ],
    )
    r = await client.put(
        f"/_matrix/client/v3/rooms/{quote(encrypted)}/send/m.room.encrypted/e1",
        headers=auth_header(token),
        json={"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "embarrassing", "body": "x"},
    )
    checked(r)
    assert bodies(await search(client, token, "embarrassing")) == ["embarrassing but kept"]


async def test_keys_and_filters(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    bob_id, bob = await register(client, "bob")
    one = await create_room(client, alice, preset="public_chat", name="Volcano club")
    two = await create_room(client, alice, preset="public_chat", topic="volcano facts")
    for room in (one, two):
        await join(client, bob, room)
        await send(client, alice, room, f"volcano talk by alice in {room}")
        await send(client, bob, room, f"volcano talk by bob in {room}")
    everything = await search(client, alice, "volcano")
    assert everything["count"] == 6
    types = sorted(r["result"]["type"] for r in everything["results"])
    assert types == ["m.room.message"] * 4 + ["m.room.name", "m.room.topic"]
    names = await search(client, alice, "volcano", keys=["content.name"])
    assert [r["result"]["content"]["name"] for r in names["results"]] == ["Volcano club"]
    topics = await search(client, alice, "volcano", keys=["content.topic", "content.name"])
    assert len(topics["results"]) == 2
    in_one = await search(client, alice, "volcano", filter={"rooms": [one]})
    assert {r["result"]["room_id"] for r in in_one["results"]} == {one}
    assert in_one["count"] == 3
    not_one = await search(client, alice, "volcano", filter={"not_rooms": [one]})
    assert {r["result"]["room_id"] for r in not_one["results"]} == {two}
    by_bob = await search(client, alice, "volcano", filter={"senders": [bob_id]})
    assert {r["result"]["sender"] for r in by_bob["results"]} == {bob_id}
    assert by_bob["count"] == 2
    not_bob = await search(client, alice, "volcano", filter={"not_senders": [bob_id]})
    assert bob_id not in {r["result"]["sender"] for r in not_bob["results"]}
    state_only = await search(client, alice, "volcano", filter={"types": ["m.room.n*"]})
    assert [r["result"]["type"] for r in state_only["results"]] == ["m.room.name"]
    not_messages = await search(client, alice, "volcano", filter={"not_types": ["m.room.message"]})
    assert len(not_messages["results"]) == 2


async def test_groupings_state_and_context(client: httpx.AsyncClient) -> None:
    alice_id, alice = await register(client, "alice")
    bob_id, bob = await register(client, "bob")
    one = await create_room(client, alice, preset="public_chat")
    two = await create_room(client, alice, preset="public_chat")
    await join(client, bob, one)
    await client.put(
        f"/_matrix/client/v3/profile/{quote(bob_id)}/displayname",
        headers=auth_header(bob),
        json={"displayname": "Bobby"},
    )
    await send(client, alice, one, "before")
    target = await send(client, bob, one, "the harbour at dawn")
    await send(client, alice, one, "after one")
    await send(client, alice, one, "after two")
    await send(client, alice, two, "harbour lights")
    result = await search(
        client,
        alice,
        "harbour",
        order_by="recent",
        include_state=True,
        groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]},
        event_context={"before_limit": 1, "after_limit": 2, "include_profile": True},
    )
    groups = result["groups"]
    assert set(groups["room_id"]) == {one, two}
    assert groups["room_id"][two] == {
        "results": [result["results"][0]["result"]["event_id"]],
        "order": 1,
    }
    assert groups["room_id"][one]["results"] == [target]
    assert groups["sender"][bob_id]["results"] == [target]
    assert groups["sender"][alice_id]["order"] == 1
    assert set(result["state"]) == {one, two}
    assert any(e["type"] == "m.room.create" for e in result["state"][one])
    context = result["results"][1]["context"]
    assert [e["content"]["body"] for e in context["events_before"]] == ["before"]
    assert [e["content"]["body"] for e in context["events_after"]] == ["after one", "after two"]
    assert context["profile_info"][bob_id] == {"displayname": "Bobby"}
    assert context["start"] and context["end"]
    # The tokens are /messages tokens of the room.
    r = await client.get(
        f"/_matrix/client/v3/rooms/{quote(one)}/messages",
        params={"from": context["end"], "dir": "b", "limit": 1},
        headers=auth_header(alice),
    )
    assert [e["content"]["body"] for e in checked(r)["chunk"]] == ["after two"]
    plain = await search(client, alice, "harbour")
    assert "context" not in plain["results"][0] and "state" not in plain and "groups" not in plain


async def test_ignored_users_are_not_found(client: httpx.AsyncClient) -> None:
    alice_id, alice = await register(client, "alice")
    bob_id, bob = await register(client, "bob")
    room = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room)
    await send(client, bob, room, "spam spam spam")
    await send(client, alice, room, "spam filter")
    r = await client.put(
        f"/_matrix/client/v3/user/{quote(alice_id)}/account_data/m.ignored_user_list",
        headers=auth_header(alice),
        json={"ignored_users": {bob_id: {}}},
    )
    checked(r)
    assert bodies(await search(client, alice, "spam")) == ["spam filter"]


async def test_bad_requests(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    await send(client, token, room, "word")
    headers = auth_header(token)

    def room_events(**criteria: Any) -> dict[str, Any]:
        return {"search_categories": {"room_events": {"search_term": "word", **criteria}}}

    await assert_errors(
        client,
        "POST",
        SEARCH,
        [
            ({}, 400, "M_MISSING_PARAM"),
            ({"search_categories": {"room_events": {}}}, 400, "M_MISSING_PARAM"),
            ({"search_categories": {"room_events": {"search_term": 7}}}, 400, "M_BAD_JSON"),
            ({"search_categories": {"messages": {"search_term": "x"}}}, 400, "M_INVALID_PARAM"),
            ({"search_categories": []}, 400, "M_BAD_JSON"),
            (room_events(order_by="oldest"), 400, "M_BAD_JSON"),
            (room_events(keys=["content.url"]), 400, "M_BAD_JSON"),
            (room_events(keys="content.body"), 400, "M_BAD_JSON"),
            (room_events(filter={"limit": "3"}), 400, "M_BAD_JSON"),
            (room_events(filter={"rooms": ["not-a-room"]}), 400, "M_BAD_JSON"),
            (room_events(event_context={"before_limit": -1}), 400, "M_BAD_JSON"),
            (room_events(event_context={"after_limit": 10_000}), 400, "M_BAD_JSON"),
            (room_events(groupings={"group_by": [{"key": "type"}]}), 400, "M_BAD_JSON"),
            (room_events(include_state="yes"), 400, "M_BAD_JSON"),
            (b"not json", 400, "M_NOT_JSON"),
        ],
        headers=headers,
    )
    for token_value in ("", "x", "t", "tabc", "r1", "r1_nan", "r1_inf", "r-1_0.5", "t1_0.5"):
        r = await client.post(
            SEARCH,
            params={"next_batch": token_value},
            headers=headers,
            json=room_events(),
        )
        checked(r, 400, "M_INVALID_PARAM", documented=False)
    # A token of one order is no token of the other.
    r = await client.post(
        SEARCH, params={"next_batch": "t5"}, headers=headers, json=room_events(order_by="rank")
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    r = await client.post(SEARCH, json=room_events())
    checked(r, 401, "M_MISSING_TOKEN", documented=False)
