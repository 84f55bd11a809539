"""Server-side key backups: versions, keys with etag and count, the replacement rules."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.e2ee_helpers import V3, Device, new_device
from tests.helpers import assert_errors
from tests.openapi_schema import assert_response_matches

ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
AUTH_DATA = {"public_key": "abcdefg", "signatures": {"@alice:test": {"ed25519:D": "sig"}}}
ROOM = "!room:test"
SESSION = "ses+sion/1"  # megolm session IDs are standard base64: `/` and `+`


def _data(
    first: int = 0, forwarded: int = 0, verified: bool = False, tag: str = "x"
) -> dict[str, Any]:
    return {
        "first_message_index": first,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": {"ephemeral": tag, "ciphertext": tag, "mac": tag},
    }


async def _call(
    client: httpx.AsyncClient,
    device: Device,
    method: str,
    path: str,
    status: int = 200,
    **kwargs: Any,
) -> Any:
    r = await client.request(method, f"{V3}{path}", headers=device.headers, **kwargs)
    assert r.status_code == status, r.text
    assert_response_matches(method, r.request.url.raw_path.decode(), status, r.json())
    return r.json()


def _session_path(room: str = ROOM, session: str = SESSION) -> str:
    return f"/room_keys/keys/{room}/{session.replace('/', '%2F')}"


async def _new_version(client: httpx.AsyncClient, device: Device) -> str:
    body = await _call(
        client,
        device,
        "POST",
        "/room_keys/version",
        json={"algorithm": ALGORITHM, "auth_data": AUTH_DATA},
    )
    return str(body["version"])


async def test_versions_lifecycle(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    err = await _call(client, alice, "GET", "/room_keys/version", 404)
    assert err["errcode"] == "M_NOT_FOUND"
    v1 = await _new_version(client, alice)
    latest = await _call(client, alice, "GET", "/room_keys/version")
    assert latest == {
        "algorithm": ALGORITHM,
        "auth_data": AUTH_DATA,
        "count": 0,
        "etag": latest["etag"],
        "version": v1,
    }
    assert await _call(client, alice, "GET", f"/room_keys/version/{v1}") == latest
    # Another user's backups are not one's own.
    await _call(client, bob, "GET", f"/room_keys/version/{v1}", 404)
    await _call(client, bob, "GET", "/room_keys/version", 404)

    new_auth = {"public_key": "hijklmn"}
    assert (
        await _call(
            client,
            alice,
            "PUT",
            f"/room_keys/version/{v1}",
            json={"algorithm": ALGORITHM, "auth_data": new_auth, "version": v1},
        )
        == {}
    )
    assert (await _call(client, alice, "GET", "/room_keys/version"))["auth_data"] == new_auth

    v2 = await _new_version(client, alice)
    assert int(v2) > int(v1)
    assert (await _call(client, alice, "GET", "/room_keys/version"))["version"] == v2
    await _call(client, alice, "DELETE", f"/room_keys/version/{v2}")
    await _call(client, alice, "DELETE", f"/room_keys/version/{v2}")  # deleted already: fine
    await _call(client, alice, "GET", f"/room_keys/version/{v2}", 404)
    # The latest is the latest one not deleted; numbers are never reused.
    assert (await _call(client, alice, "GET", "/room_keys/version"))["version"] == v1
    v3 = await _new_version(client, alice)
    assert int(v3) > int(v2)


async def test_version_bad_inputs(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    await assert_errors(
        client,
        "POST",
        f"{V3}/room_keys/version",
        [
            (b"[", 400, "M_NOT_JSON"),
            ({"auth_data": {}}, 400, "M_MISSING_PARAM"),
            ({"algorithm": ALGORITHM}, 400, "M_MISSING_PARAM"),
            ({"algorithm": ALGORITHM, "auth_data": "x"}, 400, "M_BAD_JSON"),
            ({"algorithm": "", "auth_data": {}}, 400, "M_INVALID_PARAM"),
            ({"algorithm": ALGORITHM, "auth_data": {"n": 1.5}}, 400, "M_BAD_JSON"),
        ],
        headers=alice.headers,
    )
    v1 = await _new_version(client, alice)
    await assert_errors(
        client,
        "PUT",
        f"{V3}/room_keys/version/{v1}",
        [
            ({"algorithm": "other", "auth_data": {}}, 400, "M_INVALID_PARAM"),
            ({"algorithm": ALGORITHM, "auth_data": {}, "version": "99"}, 400, "M_INVALID_PARAM"),
            ({"auth_data": {}}, 400, "M_MISSING_PARAM"),
        ],
        headers=alice.headers,
    )
    for version in ("99", "x", "01"):
        await assert_errors(
            client,
            "PUT",
            f"{V3}/room_keys/version/{version}",
            [({"algorithm": ALGORITHM, "auth_data": {}}, 404, "M_NOT_FOUND")],
            headers=alice.headers,
        )
        r = await client.delete(f"{V3}/room_keys/version/{version}", headers=alice.headers)
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
        r = await client.get(f"{V3}/room_keys/version/{version}", headers=alice.headers)
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    for method in ("GET", "POST"):
        r = await client.request(method, f"{V3}/room_keys/version", json={})
        assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_keys_round_trip_with_etag_and_count(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    v = await _new_version(client, alice)
    etag0 = (await _call(client, alice, "GET", "/room_keys/version"))["etag"]
    one = await _call(
        client, alice, "PUT", _session_path(), params={"version": v}, json=_data(tag="a")
    )
    assert one["count"] == 1 and one["etag"] != etag0
    room = await _call(
        client,
        alice,
        "PUT",
        f"/room_keys/keys/{ROOM}",
        params={"version": v},
        json={"sessions": {"s2": _data(tag="b"), "s3": _data(tag="c")}},
    )
    assert room["count"] == 3 and room["etag"] != one["etag"]
    everything = await _call(
        client,
        alice,
        "PUT",
        "/room_keys/keys",
        params={"version": v},
        json={"rooms": {"!other:test": {"sessions": {"s4": _data()}}}},
    )
    assert everything["count"] == 4
    info = await _call(client, alice, "GET", "/room_keys/version")
    assert (info["count"], info["etag"]) == (4, everything["etag"])

    assert await _call(client, alice, "GET", _session_path(), params={"version": v}) == _data(
        tag="a"
    )
    got_room = await _call(client, alice, "GET", f"/room_keys/keys/{ROOM}", params={"version": v})
    assert set(got_room["sessions"]) == {SESSION, "s2", "s3"}
    got_all = await _call(client, alice, "GET", "/room_keys/keys", params={"version": v})
    assert set(got_all["rooms"]) == {ROOM, "!other:test"}
    assert got_all["rooms"]["!other:test"] == {"sessions": {"s4": _data()}}
    # Nothing there: empty maps, or a 404 for one session.
    assert await _call(
        client, alice, "GET", "/room_keys/keys/!none:test", params={"version": v}
    ) == {"sessions": {}}
    err = await _call(
        client, alice, "GET", _session_path(session="nope"), 404, params={"version": v}
    )
    assert err["errcode"] == "M_NOT_FOUND"

    deleted = await _call(client, alice, "DELETE", _session_path(), params={"version": v})
    assert deleted["count"] == 3 and deleted["etag"] != everything["etag"]
    deleted = await _call(client, alice, "DELETE", f"/room_keys/keys/{ROOM}", params={"version": v})
    assert deleted["count"] == 1
    deleted = await _call(client, alice, "DELETE", "/room_keys/keys", params={"version": v})
    assert deleted["count"] == 0
    assert await _call(client, alice, "GET", "/room_keys/keys", params={"version": v}) == {
        "rooms": {}
    }


async def test_replacement_rules(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    v = await _new_version(client, alice)
    path = _session_path()

    async def put(data: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await _call(
            client, alice, "PUT", path, params={"version": v}, json=data
        )
        return result

    async def stored() -> dict[str, Any]:
        result: dict[str, Any] = await _call(client, alice, "GET", path, params={"version": v})
        return result

    etag = (await put(_data(first=5, forwarded=1, tag="start")))["etag"]
    # A verified key beats an unverified one, even with a later first index.
    after = await put(_data(first=9, forwarded=3, verified=True, tag="verified"))
    assert (await stored())["session_data"]["ciphertext"] == "verified"
    assert after["etag"] != etag
    # An unverified one never replaces a verified one, however early it starts.
    same = await put(_data(first=0, verified=False, tag="unverified"))
    assert (await stored())["session_data"]["ciphertext"] == "verified"
    assert same == after  # nothing changed: the etag stays
    # Same verification: the lower first message index wins...
    await put(_data(first=4, forwarded=3, verified=True, tag="earlier"))
    assert (await stored())["session_data"]["ciphertext"] == "earlier"
    await put(_data(first=6, forwarded=0, verified=True, tag="later"))
    assert (await stored())["session_data"]["ciphertext"] == "earlier"
    # ...then the lower forwarded count; a tie keeps what is stored.
    await put(_data(first=4, forwarded=1, verified=True, tag="fewer-hops"))
    assert (await stored())["session_data"]["ciphertext"] == "fewer-hops"
    await put(_data(first=4, forwarded=1, verified=True, tag="tie"))
    assert (await stored())["session_data"]["ciphertext"] == "fewer-hops"
    assert (await _call(client, alice, "GET", "/room_keys/version"))["count"] == 1


async def test_only_the_latest_version_takes_keys(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    r = await client.put(
        f"{V3}{_session_path()}", params={"version": "1"}, json=_data(), headers=alice.headers
    )
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")  # no backup at all
    v1 = await _new_version(client, alice)
    await _call(client, alice, "PUT", _session_path(), params={"version": v1}, json=_data())
    v2 = await _new_version(client, alice)
    for version in (v1, "99", "x"):
        err = await _call(
            client, alice, "PUT", _session_path(), 403, params={"version": version}, json=_data()
        )
        assert err["errcode"] == "M_WRONG_ROOM_KEYS_VERSION"
        assert err["current_version"] == v2
    # The old version's keys can still be read; deleting the new one makes the old current.
    assert (await _call(client, alice, "GET", "/room_keys/keys", params={"version": v1}))["rooms"]
    await _call(client, alice, "DELETE", f"/room_keys/version/{v2}")
    err = await _call(
        client, alice, "PUT", _session_path(), 403, params={"version": v2}, json=_data()
    )
    assert err["current_version"] == v1
    # A deleted version's keys are gone with it.
    await _call(client, alice, "DELETE", f"/room_keys/version/{v1}")
    r = await client.get(f"{V3}/room_keys/keys", params={"version": v1}, headers=alice.headers)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await client.delete(f"{V3}/room_keys/keys", params={"version": v1}, headers=alice.headers)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")


async def test_keys_bad_inputs(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    v = await _new_version(client, alice)
    path = f"{V3}{_session_path()}?version={v}"
    await assert_errors(
        client,
        "PUT",
        path,
        [
            (b"x", 400, "M_NOT_JSON"),
            ({}, 400, "M_MISSING_PARAM"),
            (_data() | {"first_message_index": -1}, 400, "M_BAD_JSON"),
            (_data() | {"forwarded_count": "1"}, 400, "M_BAD_JSON"),
            (_data() | {"is_verified": 1}, 400, "M_BAD_JSON"),
            (_data() | {"session_data": []}, 400, "M_BAD_JSON"),
            (_data() | {"first_message_index": 2**53}, 400, "M_BAD_JSON"),
        ],
        headers=alice.headers,
    )
    await assert_errors(
        client,
        "PUT",
        f"{V3}/room_keys/keys?version={v}",
        [
            ({}, 400, "M_MISSING_PARAM"),
            ({"rooms": {"not-a-room": {"sessions": {}}}}, 400, "M_INVALID_PARAM"),
            ({"rooms": {ROOM: {"sessions": {"s": {}}}}}, 400, "M_MISSING_PARAM"),
            ({"rooms": {ROOM: {"sessions": {"x" * 256: _data()}}}}, 400, "M_INVALID_PARAM"),
            (
                {"rooms": {ROOM: {"sessions": {"a\u0000b": _data()}}}},
                400,
                "M_BAD_JSON",
            ),  # NUL: refused with the JSON
        ],
        headers=alice.headers,
    )
    for method in ("GET", "DELETE"):
        for where in ("/!room:test/a%00b", "/room/session"):
            r = await client.request(
                method, f"{V3}/room_keys/keys{where}?version={v}", headers=alice.headers
            )
            assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), where
    for method in ("GET", "PUT", "DELETE"):
        r = await client.request(
            method, f"{V3}/room_keys/keys", json={"rooms": {}}, headers=alice.headers
        )
        assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM"), method
        r = await client.request(method, f"{V3}/room_keys/keys?version={v}", json={"rooms": {}})
        assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN"), method
