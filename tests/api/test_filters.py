"""POST/GET /user/{userId}/filter."""

from __future__ import annotations

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.errors import MatrixError
from homeserver.core.ids import UserID
from tests.helpers import assert_errors, auth_header, register
from tests.openapi_schema import assert_response_matches

FILTER = {
    "room": {
        "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
        "timeline": {
            "limit": 10,
            "types": ["m.room.message"],
            "not_senders": ["@spam:example.com"],
            "lazy_load_members": True,
        },
        "ephemeral": {"types": ["m.receipt", "m.typing"]},
        "include_leave": False,
    },
    "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
    "event_format": "client",
    "event_fields": ["type", "content", "sender"],
    "org.example.unstable": {"kept": True},
}


def path(user_id: str, filter_id: str | None = None) -> str:
    base = f"/_matrix/client/v3/user/{user_id}/filter"
    return base if filter_id is None else f"{base}/{filter_id}"


async def test_round_trip(client: httpx.AsyncClient) -> None:
    user_id, token = await register(client, "alice")
    response = await client.post(path(user_id), headers=auth_header(token), json=FILTER)
    assert response.status_code == 200, response.text
    assert_response_matches("POST", path(user_id), 200, response.json())
    filter_id = response.json()["filter_id"]
    assert isinstance(filter_id, str) and not filter_id.startswith("{")
    response = await client.get(path(user_id, filter_id), headers=auth_header(token))
    assert response.status_code == 200
    assert response.json() == FILTER
    assert_response_matches("GET", path(user_id, filter_id), 200, response.json())
    second = await client.post(path(user_id), headers=auth_header(token), json={})
    assert second.json()["filter_id"] != filter_id


async def test_ids_are_per_user(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    a = await client.post(path(alice), headers=auth_header(alice_token), json={"room": {}})
    b = await client.post(path(bob), headers=auth_header(bob_token), json={"presence": {}})
    assert a.json()["filter_id"] == b.json()["filter_id"]
    response = await client.get(path(bob, b.json()["filter_id"]), headers=auth_header(bob_token))
    assert response.json() == {"presence": {}}


async def test_service_reads_filters(client: httpx.AsyncClient, hs: Homeserver) -> None:
    user_id, token = await register(client, "alice")
    response = await client.post(path(user_id), headers=auth_header(token), json=FILTER)
    filter_id = response.json()["filter_id"]
    assert await hs.filters.get_filter(UserID(user_id), filter_id) == FILTER
    with pytest.raises(MatrixError) as e:
        await hs.filters.get_filter(UserID("@bob:test"), filter_id)
    assert e.value.code == "M_NOT_FOUND"


async def test_other_users_filters(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    response = await client.post(path(alice), headers=auth_header(bob_token), json={})
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"
    filter_id = (await client.post(path(alice), headers=auth_header(alice_token), json={})).json()[
        "filter_id"
    ]
    response = await client.get(path(alice, filter_id), headers=auth_header(bob_token))
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"


async def test_unknown_filter(client: httpx.AsyncClient) -> None:
    user_id, token = await register(client, "alice")
    for filter_id in ("12345", "abc", "-1", "1" * 30):
        response = await client.get(path(user_id, filter_id), headers=auth_header(token))
        assert response.status_code == 404
        assert response.json()["errcode"] == "M_NOT_FOUND"


BAD_FILTERS: list[object] = [
    [],
    {"room": []},
    {"room": {"timeline": {"limit": "10"}}},
    {"room": {"timeline": {"limit": -1}}},
    {"room": {"timeline": {"limit": 1.5}}},
    {"room": {"timeline": {"limit": True}}},
    {"room": {"rooms": ["not-a-room"]}},
    {"room": {"state": {"not_rooms": "!a:b"}}},
    {"room": {"include_leave": "yes"}},
    {"room": {"ephemeral": {"lazy_load_members": 1}}},
    {"presence": {"senders": ["alice"]}},
    {"account_data": {"types": [1]}},
    {"event_format": "xml"},
    {"event_fields": "type"},
]


async def test_bad_filter(client: httpx.AsyncClient) -> None:
    user_id, token = await register(client, "alice")
    await assert_errors(
        client,
        "POST",
        path(user_id),
        headers=auth_header(token),
        cases=[
            *((data, 400, "M_BAD_JSON") for data in BAD_FILTERS),
            (b"{", 400, "M_NOT_JSON"),
        ],
    )


async def test_needs_a_token(client: httpx.AsyncClient) -> None:
    user_id, _ = await register(client, "alice")
    response = await client.post(path(user_id), json={})
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_MISSING_TOKEN"
    response = await client.get(path(user_id, "0"), headers=auth_header("mat_unknown"))
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"


async def test_invalid_user_id(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    response = await client.post(path("alice"), headers=auth_header(token), json={})
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_INVALID_PARAM"
