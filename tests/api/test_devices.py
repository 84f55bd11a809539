"""Device management: /devices, /devices/{deviceId}, /delete_devices."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.ids import UserID
from tests.helpers import DEFAULT_PASSWORD, assert_errors, auth_header, login, register
from tests.openapi_schema import assert_response_matches

DEVICES = "/_matrix/client/v3/devices"
DELETE_DEVICES = "/_matrix/client/v3/delete_devices"


def password_auth(
    user: str = "alice", password: str = DEFAULT_PASSWORD, session: str | None = None
) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "password": password,
        "identifier": {"type": "m.id.user", "user": user},
    }
    if session is not None:
        auth["session"] = session
    return auth


async def alice(client: httpx.AsyncClient) -> tuple[str, str]:
    """alice with a second device, PHONE; returns her first token and the phone's."""
    _, token = await register(client, "alice")
    phone = await login(client, "alice", device_id="PHONE", initial_device_display_name="Phone")
    return token, str(phone["access_token"])


async def test_list_devices(client: httpx.AsyncClient, clock: FakeClock) -> None:
    token, _ = await alice(client)
    response = await client.get(DEVICES, headers=auth_header(token))
    assert response.status_code == 200
    devices = {d["device_id"]: d for d in response.json()["devices"]}
    assert len(devices) == 2
    assert devices["PHONE"] == {
        "device_id": "PHONE",
        "display_name": "Phone",
        "last_seen_ip": "127.0.0.1",
        "last_seen_ts": clock.now_ms(),
    }
    # matrix-nio requires every key, null where unknown (the spec would leave them out).
    (first,) = (d for d in devices.values() if d["device_id"] != "PHONE")
    assert first["display_name"] is None and set(first) == set(devices["PHONE"])
    await client.put(
        f"{DEVICES}/{first['device_id']}",
        headers=auth_header(token),
        json={"display_name": "Laptop"},
    )
    response = await client.get(DEVICES, headers=auth_header(token))
    assert_response_matches("GET", DEVICES, 200, response.json())


async def test_get_device(client: httpx.AsyncClient) -> None:
    token, _ = await alice(client)
    response = await client.get(f"{DEVICES}/PHONE", headers=auth_header(token))
    assert response.status_code == 200
    assert_response_matches("GET", f"{DEVICES}/PHONE", 200, response.json())
    assert response.json()["device_id"] == "PHONE"


async def test_unknown_or_foreign_device(client: httpx.AsyncClient) -> None:
    await alice(client)
    _, bob = await register(client, "bob")
    for method in ("GET", "PUT"):
        response = await client.request(
            method, f"{DEVICES}/PHONE", headers=auth_header(bob), json={"display_name": "mine now"}
        )
        assert response.status_code == 404
        assert response.json()["errcode"] == "M_NOT_FOUND"


async def test_rename_device(client: httpx.AsyncClient) -> None:
    token, _ = await alice(client)
    response = await client.put(
        f"{DEVICES}/PHONE", headers=auth_header(token), json={"display_name": "Old phone"}
    )
    assert response.status_code == 200 and response.json() == {}
    assert_response_matches("PUT", f"{DEVICES}/PHONE", 200, response.json())
    device = (await client.get(f"{DEVICES}/PHONE", headers=auth_header(token))).json()
    assert device["display_name"] == "Old phone"
    # No display_name: nothing changes.
    response = await client.put(f"{DEVICES}/PHONE", headers=auth_header(token), json={})
    assert response.status_code == 200
    device = (await client.get(f"{DEVICES}/PHONE", headers=auth_header(token))).json()
    assert device["display_name"] == "Old phone"


async def test_rename_bad_input(client: httpx.AsyncClient) -> None:
    token, _ = await alice(client)
    await assert_errors(
        client,
        "PUT",
        f"{DEVICES}/PHONE",
        headers=auth_header(token),
        cases=[
            ({"display_name": 1}, 400, "M_BAD_JSON"),
            ({"display_name": "x" * 300}, 400, "M_INVALID_PARAM"),
            (b"nope", 400, "M_NOT_JSON"),
        ],
    )


async def test_devices_need_a_token(client: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", DEVICES),
        ("GET", f"{DEVICES}/X"),
        ("PUT", f"{DEVICES}/X"),
        ("DELETE", f"{DEVICES}/X"),
        ("POST", DELETE_DEVICES),
    ):
        response = await client.request(method, path, json={})
        assert response.status_code == 401
        assert response.json()["errcode"] == "M_MISSING_TOKEN"
        response = await client.request(method, path, json={}, headers=auth_header("mat_unknown"))
        assert response.status_code == 401
        assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"


async def test_delete_device_with_uia(
    client: httpx.AsyncClient, hs: Homeserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted: list[tuple[UserID, list[str]]] = []
    delete_messages = hs.to_device.delete_for_devices

    async def delete_for_devices(user_id: UserID, device_ids: list[str]) -> None:
        deleted.append((user_id, device_ids))
        await delete_messages(user_id, device_ids)

    monkeypatch.setattr(hs.to_device, "delete_for_devices", delete_for_devices)
    token, phone = await alice(client)
    response = await client.delete(f"{DEVICES}/PHONE", headers=auth_header(token))
    assert response.status_code == 401
    challenge = response.json()
    assert challenge["flows"] == [{"stages": ["m.login.password"]}]
    assert "errcode" not in challenge
    assert_response_matches("DELETE", f"{DEVICES}/PHONE", 401, challenge)
    response = await client.request(
        "DELETE",
        f"{DEVICES}/PHONE",
        headers=auth_header(token),
        json={"auth": password_auth(password="wrong", session=challenge["session"])},
    )
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_FORBIDDEN"
    response = await client.request(
        "DELETE",
        f"{DEVICES}/PHONE",
        headers=auth_header(token),
        json={"auth": password_auth(session=challenge["session"])},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {}
    assert deleted == [(UserID("@alice:test"), ["PHONE"])]
    response = await client.get("/_matrix/client/v3/account/whoami", headers=auth_header(phone))
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"
    response = await client.get(f"{DEVICES}/PHONE", headers=auth_header(token))
    assert response.status_code == 404
    # Deleting it again is fine (spec: "or had been removed previously").
    response = await client.request(
        "DELETE", f"{DEVICES}/PHONE", headers=auth_header(token), json={"auth": password_auth()}
    )
    assert response.status_code == 200


async def test_uia_session_bound_to_the_device(client: httpx.AsyncClient) -> None:
    token, _ = await alice(client)
    response = await client.delete(f"{DEVICES}/PHONE", headers=auth_header(token))
    session = response.json()["session"]
    me = (await client.get("/_matrix/client/v3/account/whoami", headers=auth_header(token))).json()[
        "device_id"
    ]
    response = await client.request(
        "DELETE",
        f"{DEVICES}/{me}",
        headers=auth_header(token),
        json={"auth": password_auth(session=session)},
    )
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"


async def test_delete_device_of_another_user_does_nothing(client: httpx.AsyncClient) -> None:
    _, phone = await alice(client)
    _, bob = await register(client, "bob")
    response = await client.request(
        "DELETE", f"{DEVICES}/PHONE", headers=auth_header(bob), json={"auth": password_auth("bob")}
    )
    assert response.status_code == 200
    response = await client.get("/_matrix/client/v3/account/whoami", headers=auth_header(phone))
    assert response.status_code == 200


async def test_delete_device_with_alice_password_as_bob(client: httpx.AsyncClient) -> None:
    await alice(client)
    _, bob = await register(client, "bob")
    response = await client.request(
        "DELETE",
        f"{DEVICES}/PHONE",
        headers=auth_header(bob),
        json={"auth": password_auth("alice")},
    )
    # Right password of the wrong account: refused outright (403, no new challenge), as
    # Synapse does and SyTest checks.
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"
    assert "flows" not in response.json()


async def test_device_id_with_a_slash(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    data = await login(client, "alice", device_id="a/b")
    response = await client.get(f"{DEVICES}/a%2Fb", headers=auth_header(data["access_token"]))
    assert response.status_code == 200
    assert response.json()["device_id"] == "a/b"


async def test_delete_devices(client: httpx.AsyncClient) -> None:
    token, phone = await alice(client)
    laptop = (await login(client, "alice", device_id="LAPTOP"))["access_token"]
    body: dict[str, Any] = {"devices": ["PHONE", "LAPTOP", "UNKNOWN"]}
    response = await client.post(DELETE_DEVICES, headers=auth_header(token), json=body)
    assert response.status_code == 401
    assert_response_matches("POST", DELETE_DEVICES, 401, response.json())
    body["auth"] = password_auth(session=response.json()["session"])
    response = await client.post(DELETE_DEVICES, headers=auth_header(token), json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {}
    for t in (phone, laptop):
        response = await client.get("/_matrix/client/v3/account/whoami", headers=auth_header(t))
        assert response.status_code == 401
    devices = (await client.get(DEVICES, headers=auth_header(token))).json()["devices"]
    assert len(devices) == 1


async def test_delete_devices_bad_input(client: httpx.AsyncClient) -> None:
    token, _ = await alice(client)
    await assert_errors(
        client,
        "POST",
        DELETE_DEVICES,
        headers=auth_header(token),
        cases=[
            ({}, 400, "M_MISSING_PARAM"),
            ({"devices": "PHONE"}, 400, "M_BAD_JSON"),
            ({"devices": [1]}, 400, "M_BAD_JSON"),
            ({"devices": [], "auth": "x"}, 400, "M_BAD_JSON"),
            (b"[", 400, "M_NOT_JSON"),
        ],
    )
