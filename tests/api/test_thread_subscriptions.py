"""Thread subscriptions (MSC4306), their pagination (MSC4308) and sliding sync's
``thread_subscriptions`` extension, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from homeserver.app import Homeserver
from tests.api.sliding_helpers import sliding
from tests.api.test_sliding_sync_websocket import WAIT_S, FakeClient
from tests.helpers import assert_errors, auth_header, create_room, register

CONFLICT = "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION"
NOT_IN_THREAD = "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD"
PAGES = "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions"


def _path(room_id: str, root: str) -> str:
    return f"/_matrix/client/unstable/io.element.msc4306/rooms/{room_id}/thread/{root}/subscription"


async def _send(
    client: httpx.AsyncClient, token: str, room_id: str, text: str, root: str | None = None
) -> str:
    content: dict[str, Any] = {"msgtype": "m.text", "body": text}
    if root is not None:
        content["m.relates_to"] = {"rel_type": "m.thread", "event_id": root}
    r = await client.put(
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{text}",
        json=content,
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def _call(
    client: httpx.AsyncClient,
    method: str,
    token: str,
    room_id: str,
    root: str,
    body: dict[str, Any] | None = None,
    status: int = 200,
) -> dict[str, Any]:
    r = await client.request(method, _path(room_id, root), headers=auth_header(token), json=body)
    assert r.status_code == status, r.text
    data: dict[str, Any] = r.json()
    return data


async def test_subscribe_read_and_unsubscribe(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    root = await _send(client, token, room, "root")
    reply = await _send(client, token, room, "reply", root)
    got = await _call(client, "GET", token, room, root, status=404)
    assert got["errcode"] == "M_NOT_FOUND"
    assert await _call(client, "PUT", token, room, root, {}) == {}
    assert await _call(client, "GET", token, room, root) == {"automatic": False}
    # An automatic subscription does not turn a manual one into an automatic one.
    await _call(client, "PUT", token, room, root, {"automatic": reply})
    assert await _call(client, "GET", token, room, root) == {"automatic": False}
    assert await _call(client, "DELETE", token, room, root) == {}
    assert (await _call(client, "GET", token, room, root, status=404))["errcode"] == "M_NOT_FOUND"
    # Unsubscribing again changes nothing and is no error.
    assert await _call(client, "DELETE", token, room, root) == {}
    # A PUT without a body subscribes by hand.
    r = await client.put(_path(room, root), headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert await _call(client, "GET", token, room, root) == {"automatic": False}


async def test_automatic_subscription_and_conflicting_unsubscription(
    client: httpx.AsyncClient,
) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    root = await _send(client, token, room, "root")
    early = await _send(client, token, room, "early", root)
    await _call(client, "PUT", token, room, root, {"automatic": early})
    assert await _call(client, "GET", token, room, root) == {"automatic": True}
    await _call(client, "DELETE", token, room, root)
    # The user unsubscribed after `early`: an automatic subscription for it conflicts.
    got = await _call(client, "PUT", token, room, root, {"automatic": early}, status=409)
    assert got["errcode"] == CONFLICT
    assert (await _call(client, "GET", token, room, root, status=404))["errcode"] == "M_NOT_FOUND"
    # One for an event after the unsubscription is taken.
    late = await _send(client, token, room, "late", root)
    await _call(client, "PUT", token, room, root, {"automatic": late})
    assert await _call(client, "GET", token, room, root) == {"automatic": True}
    # A manual subscription upgrades an automatic one.
    await _call(client, "PUT", token, room, root, {})
    assert await _call(client, "GET", token, room, root) == {"automatic": False}
    # A manual subscription is never refused, even after an unsubscription.
    await _call(client, "DELETE", token, room, root)
    await _call(client, "PUT", token, room, root, {})
    assert await _call(client, "GET", token, room, root) == {"automatic": False}


async def test_bad_inputs(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    headers = auth_header(token)
    room = await create_room(client, token)
    root = await _send(client, token, room, "root")
    other_root = await _send(client, token, room, "other")
    reply_elsewhere = await _send(client, token, room, "elsewhere", other_root)
    path = _path(room, root)
    await assert_errors(
        client,
        "PUT",
        path,
        [
            (b"not json", 400, "M_NOT_JSON"),
            ([], 400, "M_BAD_JSON"),
            ({"automatic": 5}, 400, "M_BAD_JSON"),
            ({"automatic": "no-sigil"}, 400, "M_INVALID_PARAM"),
            ({"automatic": "$unknown"}, 404, "M_NOT_FOUND"),
            ({"automatic": root}, 400, NOT_IN_THREAD),  # the root is not in its thread
            ({"automatic": reply_elsewhere}, 400, NOT_IN_THREAD),
        ],
        headers=headers,
    )
    for method in ("GET", "PUT", "DELETE"):
        body = {} if method == "PUT" else None
        for bad_path, status, errcode in [
            (_path(room, "$unknown"), 404, "M_NOT_FOUND"),
            (_path(room, "no-sigil"), 400, "M_INVALID_PARAM"),
            (_path("not-a-room", root), 400, "M_INVALID_PARAM"),
            (_path("!unknown:test", root), 404, "M_NOT_FOUND"),
        ]:
            r = await client.request(method, bad_path, headers=headers, json=body)
            assert (r.status_code, r.json()["errcode"]) == (status, errcode), (
                method,
                bad_path,
                r.text,
            )
        # Not in the room: the same as an unknown thread.
        r = await client.request(method, path, headers=auth_header(bob_token), json=body)
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text
        r = await client.request(method, path, json=body)
        assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN"), r.text
    for query, errcode in [
        ("", "M_INVALID_PARAM"),
        ("?dir=f", "M_INVALID_PARAM"),
        ("?dir=b&limit=0", "M_INVALID_PARAM"),
        ("?dir=b&limit=x", "M_INVALID_PARAM"),
        ("?dir=b&from=garbage", "M_INVALID_PARAM"),
        ("?dir=b&from=ts-1", "M_INVALID_PARAM"),
        ("?dir=b&to=garbage", "M_INVALID_PARAM"),
    ]:
        r = await client.get(PAGES + query, headers=headers)
        assert (r.status_code, r.json()["errcode"]) == (400, errcode), (query, r.text)
    bad_ext = [
        {"thread_subscriptions": {"enabled": True, "limit": 0}},
        {"thread_subscriptions": {"enabled": True, "limit": "5"}},
        {"thread_subscriptions": {"enabled": "yes"}},
    ]
    for ext in bad_ext:
        got = await sliding(client, token, {"extensions": ext}, status=400)
        assert got["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), got


async def test_extension_initial_incremental_and_pagination(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    roots = [await _send(client, token, room, f"root{i}") for i in range(3)]
    ext = {"thread_subscriptions": {"enabled": True, "limit": 2}}
    empty = await sliding(client, token, {"extensions": ext})
    assert empty["extensions"]["thread_subscriptions"] == {}
    for root in roots:
        await _call(client, "PUT", token, room, root, {})
    first = await sliding(client, token, {"extensions": ext})
    got = first["extensions"]["thread_subscriptions"]
    # The latest two, and a token to fetch the older ones.
    assert sorted(got["subscribed"][room]) == sorted(roots[1:])
    stamps = [got["subscribed"][room][r]["bump_stamp"] for r in roots[1:]]
    assert stamps[0] < stamps[1]
    assert all(v["automatic"] is False for v in got["subscribed"][room].values())
    assert "unsubscribed" not in got
    r = await client.get(
        PAGES,
        params={"dir": "b", "from": got["prev_batch"], "limit": "5"},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    older = r.json()
    assert list(older["subscribed"][room]) == [roots[0]]
    assert "end" not in older
    # Pages of one, back from now, down to the first response's position.
    r = await client.get(PAGES, params={"dir": "b", "limit": "1"}, headers=auth_header(token))
    page = r.json()
    assert list(page["subscribed"][room]) == [roots[2]]
    r = await client.get(
        PAGES,
        params={"dir": "b", "limit": "1", "from": page["end"], "to": empty["pos"]},
        headers=auth_header(token),
    )
    assert list(r.json()["subscribed"][room]) == [roots[1]]

    # Incremental: only what changed since the connection's position.
    quiet = await sliding(client, token, {"extensions": ext}, pos=first["pos"])
    assert quiet["extensions"]["thread_subscriptions"] == {}
    await _call(client, "DELETE", token, room, roots[0])
    second = await sliding(client, token, {"extensions": ext}, pos=quiet["pos"])
    got = second["extensions"]["thread_subscriptions"]
    assert list(got["unsubscribed"][room]) == [roots[0]]
    assert got["unsubscribed"][room][roots[0]]["bump_stamp"] > stamps[1]
    assert "subscribed" not in got and "prev_batch" not in got
    # Retrying the same pos gives the same delta.
    again = await sliding(client, token, {"extensions": ext}, pos=quiet["pos"])
    assert again["extensions"]["thread_subscriptions"] == got
    # Pagination from the incremental response's position down to the previous one.
    r = await client.get(PAGES, params={"dir": "b", "to": quiet["pos"]}, headers=auth_header(token))
    assert r.json() == {"unsubscribed": {room: {roots[0]: got["unsubscribed"][room][roots[0]]}}}
    # Not asked for: not sent.
    plain = await sliding(client, token, {}, pos=second["pos"])
    assert "thread_subscriptions" not in plain.get("extensions", {})


async def test_extension_wakes_a_long_poll(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    root = await _send(client, token, room, "root")
    ext = {"thread_subscriptions": {"enabled": True}}
    first = await sliding(client, token, {"extensions": ext})
    waiting = asyncio.create_task(
        sliding(client, token, {"extensions": ext}, pos=first["pos"], timeout=30_000)
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await _call(client, "PUT", token, room, root, {})
    body = await asyncio.wait_for(waiting, 10)
    assert list(body["extensions"]["thread_subscriptions"]["subscribed"][room]) == [root]


async def test_subscriptions_are_per_user(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    room = await create_room(client, token, preset="public_chat")
    r = await client.post(
        f"/_matrix/client/v3/join/{room}", headers=auth_header(bob_token), json={}
    )
    assert r.status_code == 200, r.text
    root = await _send(client, token, room, "root")
    await _call(client, "PUT", token, room, root, {})
    assert (await _call(client, "GET", bob_token, room, root, status=404))[
        "errcode"
    ] == "M_NOT_FOUND"
    ext = {"thread_subscriptions": {"enabled": True}}
    bob_view = await sliding(client, bob_token, {"extensions": ext})
    assert bob_view["extensions"]["thread_subscriptions"] == {}
    r = await client.get(PAGES, params={"dir": "b"}, headers=auth_header(bob_token))
    assert r.json() == {}
    assert alice


async def test_extension_over_websocket(client: httpx.AsyncClient, hs: Homeserver) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    root = await _send(client, token, room, "root")
    peer = FakeClient()
    task = asyncio.create_task(
        hs.websocket.serve(
            peer, authorization=f"Bearer {token}", token_in_url=False, query={"stream": "none"}
        )
    )
    try:
        request = {"extensions": {"thread_subscriptions": {"enabled": True}}}
        peer.request("1", "sliding_sync", request)
        first = (await peer.answer("1"))["result"]
        assert first["extensions"]["thread_subscriptions"] == {}
        peer.request("2", "sliding_sync", {**request, "pos": first["pos"], "timeout": 30_000})
        await _call(client, "PUT", token, room, root, {})
        second = (await peer.answer("2"))["result"]
        got = second["extensions"]["thread_subscriptions"]["subscribed"][room][root]
        assert got["automatic"] is False
    finally:
        peer.incoming.put_nowait(None)
        await asyncio.wait_for(task, WAIT_S)
