"""Requests of simplified sliding sync (MSC4186), shaped as Element X sends them."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import auth_header

SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


async def sliding(
    client: httpx.AsyncClient,
    token: str,
    body: dict[str, Any],
    *,
    pos: str | None = None,
    timeout: int | None = None,
    status: int = 200,
) -> dict[str, Any]:
    params: dict[str, str] = {}
    if pos is not None:
        params["pos"] = pos
    if timeout is not None:
        params["timeout"] = str(timeout)
    r = await client.post(SLIDING_SYNC, params=params, json=body, headers=auth_header(token))
    assert r.status_code == status, r.text
    data: dict[str, Any] = r.json()
    return data


def room_list(
    ranges: list[list[int]] | None = None,
    *,
    timeline_limit: int = 1,
    required_state: list[list[str]] | None = None,
    **filters: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ranges": ranges if ranges is not None else [[0, 19]],
        "timeline_limit": timeline_limit,
        "required_state": required_state if required_state is not None else [],
    }
    if filters:
        body["filters"] = filters
    return body


async def send(client: httpx.AsyncClient, token: str, room_id: str, text: str) -> str:
    r = await client.put(
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{text}",
        json={"msgtype": "m.text", "body": text},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def post(client: httpx.AsyncClient, token: str, path: str, body: dict[str, Any]) -> Any:
    r = await client.post(f"/_matrix/client/v3{path}", json=body, headers=auth_header(token))
    assert r.status_code == 200, r.text
    return r.json()


async def put(client: httpx.AsyncClient, token: str, path: str, body: dict[str, Any]) -> Any:
    r = await client.put(f"/_matrix/client/v3{path}", json=body, headers=auth_header(token))
    assert r.status_code == 200, r.text
    return r.json()


def ids(response: dict[str, Any], name: str = "all") -> list[str]:
    """The room IDs of a list's ranges, in order."""
    return [r for op in response["lists"][name]["ops"] for r in op["room_ids"]]


def bodies(room: dict[str, Any]) -> list[str]:
    return [
        e["content"].get("body") for e in room.get("timeline", []) if e["type"] == "m.room.message"
    ]
