"""Sliding sync: every bad input gets a Matrix error, never a 500."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.sliding_helpers import SLIDING_SYNC, room_list, sliding
from tests.helpers import assert_errors, auth_header, register


def _list(**fields: Any) -> dict[str, Any]:
    return {"lists": {"all": {**room_list(), **fields}}}


async def test_bad_bodies(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    bad = "M_BAD_JSON"
    cases: list[tuple[object, int, str]] = [
        (b"{", 400, "M_NOT_JSON"),
        ([], 400, bad),
        ({"lists": "x"}, 400, bad),
        ({"lists": {"all": []}}, 400, bad),
        (_list(timeline_limit="1"), 400, bad),
        (_list(timeline_limit=True), 400, bad),
        (_list(timeline_limit=-1), 400, bad),
        (_list(timeline_limit=1001), 400, bad),
        (_list(ranges=[[5, 1]]), 400, bad),
        (_list(ranges=[[0]]), 400, "M_MISSING_PARAM"),
        (_list(ranges=[[-1, 3]]), 400, bad),
        (_list(ranges=[[0, "9"]]), 400, bad),
        (_list(ranges=[[0, 1]] * 101), 400, bad),
        (_list(required_state=[["m.room.name"]]), 400, "M_MISSING_PARAM"),
        (_list(required_state=[[1, 2]]), 400, bad),
        (_list(required_state="*"), 400, bad),
        (_list(filters={"is_dm": "yes"}), 400, bad),
        (_list(filters={"room_types": "m.space"}), 400, bad),
        (_list(filters={"spaces": [1]}), 400, bad),
        (_list(filters={"tags": "m.favourite"}), 400, bad),
        (_list(filters={"tags": [None]}), 400, bad),
        (_list(filters={"not_tags": [1]}), 400, bad),
        (_list(filters={"not_tags": ["t"] * 1001}), 400, bad),
        (_list(filters={"room_name_like": 5}), 400, bad),
        (_list(filters={"room_name_like": ["a"]}), 400, bad),
        (_list(filters={"room_name_like": "x" * 1001}), 400, bad),
        ({"conn_id": "x" * 65}, 400, bad),
        ({"conn_id": 5}, 400, bad),
        ({"lists": {"x" * 65: room_list()}}, 400, bad),
        ({"lists": {str(i): room_list() for i in range(101)}}, 400, bad),
        ({"room_subscriptions": {"not-a-room": {"timeline_limit": 1}}}, 400, "M_INVALID_PARAM"),
        ({"room_subscriptions": {"!a:test": {"timeline_limit": "1"}}}, 400, bad),
        ({"extensions": {"to_device": {"enabled": True, "since": "abc"}}}, 400, bad),
        ({"extensions": {"to_device": {"enabled": True, "since": "9" * 30}}}, 400, bad),
        ({"extensions": {"to_device": {"enabled": True, "limit": 0}}}, 400, bad),
        ({"extensions": {"e2ee": {"enabled": "true"}}}, 400, bad),
        ({"extensions": {"receipts": {"enabled": True, "lists": "all"}}}, 400, bad),
        ({"extensions": {"typing": {"enabled": True, "rooms": [1]}}}, 400, bad),
    ]
    await assert_errors(client, "POST", SLIDING_SYNC, cases, headers=auth_header(token))


async def test_bad_query_parameters(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    first = await sliding(client, token, {})
    for params, errcode in (
        ({"pos": "garbage"}, "M_INVALID_PARAM"),
        ({"pos": "1/xyz"}, "M_INVALID_PARAM"),
        ({"pos": "/s1"}, "M_INVALID_PARAM"),
        ({"pos": "9" * 30 + "/s1"}, "M_INVALID_PARAM"),
        ({"pos": "１/s1"}, "M_INVALID_PARAM"),  # a full-width digit
        ({"timeout": "x"}, "M_INVALID_PARAM"),
        ({"timeout": "-1"}, "M_INVALID_PARAM"),
    ):
        r = await client.post(SLIDING_SYNC, params=params, json={}, headers=auth_header(token))
        assert (r.status_code, r.json()["errcode"]) == (400, errcode), (params, r.text)
    # A made-up token far past every position reads as "now", not as an error.
    number = first["pos"].split("/")[0]
    huge = f"{number}/s" + "_".join(["999999999999999999"] * 8)
    body = await sliding(
        client,
        token,
        {"extensions": {"e2ee": {"enabled": True}}, "lists": {"all": room_list()}},
        pos=huge,
    )
    assert body["rooms"] == {}


async def test_needs_an_access_token(client: httpx.AsyncClient) -> None:
    r = await client.post(SLIDING_SYNC, json={})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_lenient_where_the_msc_says_so(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    # An empty body, unknown extensions and unknown fields are fine.
    body = await sliding(client, token, {"extensions": {"org.example.future": {"enabled": True}}})
    assert body["rooms"] == {} and body["extensions"] == {}
    r = await client.post(SLIDING_SYNC, headers=auth_header(token))
    assert r.status_code == 200, r.text
    # A range past the end of the list: what there is.
    body = await sliding(client, token, {"lists": {"all": room_list([[5, 10]])}})
    assert body["lists"]["all"] == {"count": 0, "ops": []}
