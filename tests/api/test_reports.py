"""Reporting content: rooms (spec v1.13), events, users (v1.14)."""

from __future__ import annotations

import httpx

from homeserver.app import Homeserver
from tests.api.sliding_helpers import send
from tests.helpers import auth_header, create_room, register

V3 = "/_matrix/client/v3"


async def _report(
    client: httpx.AsyncClient, token: str, path: str, body: object, status: int = 200
) -> dict[str, object]:
    r = await client.post(V3 + path, json=body, headers=auth_header(token))
    assert r.status_code == status, r.text
    data: dict[str, object] = r.json()
    return data


async def test_reports_are_kept(client: httpx.AsyncClient, hs: Homeserver) -> None:
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, token)
    event_id = await send(client, token, room, "bad")
    # A room: anyone may report it, member or not; the reason may be blank.
    assert await _report(client, bob_token, f"/rooms/{room}/report", {"reason": ""}) == {}
    # An event: members only; the reason may be left out.
    assert await _report(client, token, f"/rooms/{room}/report/{event_id}", {}) == {}
    # A user, local or remote.
    await _report(client, token, f"/users/{bob}/report", {"reason": "spam"})
    await _report(client, token, "/users/@someone:elsewhere/report", {"reason": "spam"})
    assert await hs.reports._store.count_reports() == 4


async def test_not_found(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    room = await create_room(client, token)
    event_id = await send(client, token, room, "x")
    other = await create_room(client, token)
    for who, path, body in (
        (token, "/rooms/!nowhere:test/report", {"reason": "x"}),
        (bob_token, f"/rooms/{room}/report/{event_id}", {}),  # not a member
        (token, f"/rooms/{other}/report/{event_id}", {}),  # the event is not in that room
        (token, f"/rooms/{room}/report/$unknown", {}),
        (token, "/users/@ghost:test/report", {"reason": "x"}),
    ):
        body = await _report(client, who, path, body, 404)
        assert body["errcode"] == "M_NOT_FOUND", (path, body)


async def test_bad_requests(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room = await create_room(client, token)
    for path, body, errcode in (
        (f"/rooms/{room}/report", {}, "M_MISSING_PARAM"),
        (f"/rooms/{room}/report", {"reason": 5}, "M_BAD_JSON"),
        (f"/rooms/{room}/report", {"reason": "x" * 5000}, "M_INVALID_PARAM"),
        (f"/users/{alice}/report", {}, "M_MISSING_PARAM"),
        ("/users/nobody/report", {"reason": "x"}, "M_INVALID_PARAM"),
        ("/rooms/nowhere/report", {"reason": "x"}, "M_INVALID_PARAM"),
    ):
        data = await _report(client, token, path, body, 400)
        assert data["errcode"] == errcode, (path, body, data)
    r = await client.post(f"{V3}/rooms/{room}/report", json={"reason": "x"})
    assert r.status_code == 401


async def test_versions_include_the_reporting_versions(client: httpx.AsyncClient) -> None:
    r = await client.get("/_matrix/client/versions")
    assert {"v1.13", "v1.14"} <= set(r.json()["versions"])
