"""The key server, the notary endpoints, X-Matrix authentication and the federation
queries, through the in-process client."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.ids import UserID
from tests.federation_helpers import FakeRemote, served_offline
from tests.helpers import auth_header, register

FED = "/_matrix/federation/v1"


def signed_get(remote: FakeRemote, uri: str, destination: str | None = "test") -> dict[str, str]:
    # Without a destination in the header, the signed JSON still names ours (older servers).
    return {
        "Authorization": remote.authorization(destination, "GET", uri, signed_destination="test")
    }


async def test_server_keys_are_signed_by_the_server(
    fed: tuple[Homeserver, httpx.AsyncClient], clock: FakeClock
) -> None:
    hs, client = fed
    response = await client.get("/_matrix/key/v2/server")
    assert response.status_code == 200
    body = response.json()
    assert body["server_name"] == "test"
    assert body["valid_until_ts"] == clock.now_ms() + hs.config.federation.key_validity_ms
    assert body["old_verify_keys"] == {}
    [(key_id, key)] = body["verify_keys"].items()
    alg, version = key_id.split(":")
    verify_signed_json(body, "test", decode_verify_key_base64(alg, version, key["key"]))
    # The deprecated form with a key ID in the path (older servers, SyTest) answers the same.
    for path_key_id in (key_id, "ed25519:other"):
        again = await client.get(f"/_matrix/key/v2/server/{quote(path_key_id, safe='')}")
        assert again.status_code == 200
        assert again.json() == body


async def test_version(fed: tuple[Homeserver, httpx.AsyncClient]) -> None:
    _, client = fed
    response = await client.get(f"{FED}/version")
    assert response.status_code == 200
    assert response.json()["server"]["name"] == "homeserver"


async def test_signed_query_profile(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    await client.put(
        "/_matrix/client/v3/profile/@alice:test/displayname",
        headers=auth_header(token),
        json={"displayname": "Alice"},
    )
    uri = f"{FED}/query/profile?user_id=%40alice%3Atest"
    response = await client.get(uri, headers=signed_get(remote, uri))
    assert response.status_code == 200, response.text
    assert response.json() == {"displayname": "Alice"}
    uri = f"{FED}/query/profile?user_id=%40alice%3Atest&field=displayname"
    response = await client.get(uri, headers=signed_get(remote, uri))
    assert response.json() == {"displayname": "Alice"}
    uri = f"{FED}/query/profile?user_id=%40alice%3Atest&field=avatar_url"
    response = await client.get(uri, headers=signed_get(remote, uri))
    assert response.status_code == 200 and response.json() == {}
    # Without destination (older servers): accepted, the signature still covers our name.
    uri = f"{FED}/query/profile?user_id=%40alice%3Atest"
    response = await client.get(uri, headers=signed_get(remote, uri, destination=None))
    assert response.status_code == 200


async def test_unauthenticated_and_badly_signed_requests_get_401(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    _, client = fed
    uri = f"{FED}/query/profile?user_id=%40alice%3Atest"
    good = remote.authorization("test", "GET", uri)
    stranger = FakeRemote("remote.test", "r1")  # same name and key ID, another key
    cases: list[tuple[str, dict[str, str]]] = [
        ("no header", {}),
        ("bearer", {"Authorization": "Bearer abc"}),
        ("garbage", {"Authorization": "X-Matrix ,,,=="}),
        ("no sig", {"Authorization": 'X-Matrix origin="remote.test",key="ed25519:r1"'}),
        ("other destination", {"Authorization": remote.authorization("elsewhere", "GET", uri)}),
        (
            "signed for another destination",
            {"Authorization": remote.authorization("test", "GET", uri, signed_destination="x")},
        ),
        ("other uri", {"Authorization": remote.authorization("test", "GET", uri + "&x=1")}),
        ("other method", {"Authorization": remote.authorization("test", "POST", uri)}),
        ("forged", {"Authorization": stranger.authorization("test", "GET", uri)}),
        ("bad origin", {"Authorization": good.replace("remote.test", "bad name!")}),
        ("unknown key", {"Authorization": good.replace("ed25519:r1", "ed25519:zz")}),
        ("unknown server", {"Authorization": good.replace("remote.test", "nowhere.test")}),
        ("claims to be us", {"Authorization": good.replace("remote.test", "test")}),
        ("not base64", {"Authorization": good.rsplit("sig=", 1)[0] + 'sig="!!!"'}),
        ("empty sig", {"Authorization": good.rsplit("sig=", 1)[0] + 'sig=""'}),
        ("IP origin", {"Authorization": good.replace("remote.test", "[::1]")}),
        ("port out of range", {"Authorization": good.replace("remote.test", "a.test:99999")}),
        ("long origin", {"Authorization": good.replace("remote.test", "a" * 300)}),
        ("long key", {"Authorization": good.replace("ed25519:r1", "ed25519:" + "k" * 5000)}),
        ("no scheme params", {"Authorization": "X-Matrix "}),
    ]
    for name, headers in cases:
        response = await client.get(uri, headers=headers)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["errcode"] == "M_UNAUTHORIZED", name


async def test_two_headers_must_agree(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    _, client = fed
    uri = f"{FED}/query/profile?user_id=%40alice%3Atest"
    good = remote.authorization("test", "GET", uri)
    other = FakeRemote("other.test").authorization("test", "GET", uri)
    response = await client.get(uri, headers=[("Authorization", good), ("Authorization", other)])
    assert (response.status_code, response.json()["errcode"]) == (401, "M_UNAUTHORIZED")


async def test_signed_body_is_checked(
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    remote: FakeRemote,
    fed: tuple[Homeserver, httpx.AsyncClient],
) -> None:
    # The notary POST is unauthenticated, but a signed request with a body covers the body:
    # checked through the authenticator directly.
    hs, _ = fed
    content = {"a": 1}
    header = remote.authorization("test", "PUT", "/x", content)
    assert await hs.federation_auth.authenticate("PUT", "/x", [header], content) == "remote.test"
    from homeserver.core.errors import MatrixError

    with pytest.raises(MatrixError) as e:
        await hs.federation_auth.authenticate("PUT", "/x", [header], {"a": 2})
    assert e.value.status == 401


async def test_query_errors(fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote) -> None:
    _, client = fed
    cases = [
        (f"{FED}/query/profile", 400, "M_MISSING_PARAM"),
        (f"{FED}/query/profile?user_id=nobody", 400, "M_INVALID_PARAM"),
        (f"{FED}/query/profile?user_id=%40bob%3Aelsewhere", 400, "M_INVALID_PARAM"),
        (f"{FED}/query/profile?user_id=%40ghost%3Atest", 404, "M_NOT_FOUND"),
        (f"{FED}/query/directory", 400, "M_MISSING_PARAM"),
        (f"{FED}/query/directory?room_alias=lounge", 400, "M_INVALID_PARAM"),
        (f"{FED}/query/directory?room_alias=%23lounge%3Atest", 404, "M_NOT_FOUND"),
        (f"{FED}/query/directory?room_alias=%23lounge%3Aelsewhere", 404, "M_NOT_FOUND"),
        (f"{FED}/no/such/endpoint", 404, "M_UNRECOGNIZED"),
    ]
    for uri, status, errcode in cases:
        response = await client.get(uri, headers=signed_get(remote, uri))
        assert (response.status_code, response.json()["errcode"]) == (status, errcode), uri


async def test_query_directory(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    response = await client.post(
        "/_matrix/client/v3/createRoom",
        headers=auth_header(token),
        json={"room_alias_name": "lounge"},
    )
    room_id = response.json()["room_id"]
    uri = f"{FED}/query/directory?room_alias=%23lounge%3Atest"
    response = await client.get(uri, headers=signed_get(remote, uri))
    assert response.status_code == 200, response.text
    assert response.json() == {"room_id": room_id, "servers": ["test"]}


async def test_notary_serves_held_keys_co_signed(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote, clock: FakeClock
) -> None:
    hs, client = fed
    our_key = hs.local_keys.verify_key
    for response in (
        await client.get("/_matrix/key/v2/query/remote.test"),
        # The deprecated form with a key ID (SyTest's notary tests use it).
        await client.get(f"/_matrix/key/v2/query/remote.test/{remote.key_id}"),
        await client.post(
            "/_matrix/key/v2/query",
            json={"server_keys": {"remote.test": {remote.key_id: {}}}},
        ),
        await client.post("/_matrix/key/v2/query", json={"server_keys": {"remote.test": {}}}),
    ):
        assert response.status_code == 200, response.text
        [answer] = response.json()["server_keys"]
        verify_signed_json(
            answer, "remote.test", decode_verify_key_base64("ed25519", "r1", remote.verify_key)
        )
        verify_signed_json(
            answer,
            "test",
            decode_verify_key_base64("ed25519", hs.local_keys.key_id.split(":")[1], our_key),
        )
    # Our own keys, and nothing (not an error) for a server we cannot reach.
    response = await client.post(
        "/_matrix/key/v2/query", json={"server_keys": {"test": {}, "gone.test": {}}}
    )
    [own] = response.json()["server_keys"]
    assert own["server_name"] == "test"
    response = await client.get("/_matrix/key/v2/query/gone.test?minimum_valid_until_ts=5")
    assert response.json() == {"server_keys": []}
    assert (await client.post("/_matrix/key/v2/query", json={"server_keys": {}})).json() == {
        "server_keys": []
    }


async def test_notary_bad_input(fed: tuple[Homeserver, httpx.AsyncClient]) -> None:
    _, client = fed
    from tests.helpers import assert_errors

    too_many = {f"s{i}.test": {} for i in range(101)}
    await assert_errors(
        client,
        "POST",
        "/_matrix/key/v2/query",
        [
            (b"not json", 400, "M_NOT_JSON"),
            ([], 400, "M_BAD_JSON"),
            ({}, 400, "M_BAD_JSON"),
            ({"server_keys": []}, 400, "M_BAD_JSON"),
            ({"server_keys": {"bad name!": {}}}, 400, "M_INVALID_PARAM"),
            ({"server_keys": {"a.test": []}}, 400, "M_BAD_JSON"),
            ({"server_keys": {"a.test": {"ed25519:k": []}}}, 400, "M_BAD_JSON"),
            (
                {"server_keys": {"a.test": {"ed25519:k": {"minimum_valid_until_ts": "1"}}}},
                400,
                "M_BAD_JSON",
            ),
            (
                {"server_keys": {"a.test": {"ed25519:k": {"minimum_valid_until_ts": True}}}},
                400,
                "M_BAD_JSON",
            ),
            ({"server_keys": too_many}, 413, "M_TOO_LARGE"),
        ],
    )
    for uri, status, errcode in [
        ("/_matrix/key/v2/query/bad%20name", 400, "M_INVALID_PARAM"),
        ("/_matrix/key/v2/query/bad%20name/ed25519:k", 400, "M_INVALID_PARAM"),
        ("/_matrix/key/v2/query/a.test?minimum_valid_until_ts=soon", 400, "M_INVALID_PARAM"),
        ("/_matrix/key/v2/query/a.test?minimum_valid_until_ts=-1", 400, "M_INVALID_PARAM"),
    ]:
        response = await client.get(uri)
        assert (response.status_code, response.json()["errcode"]) == (status, errcode), uri


async def test_denied_server_gets_403(
    tmp_path: Path, db_url: str, clock: FakeClock, remote: FakeRemote
) -> None:
    async for _, client in served_offline(
        tmp_path, db_url, clock, federation={"deny_servers": ["*.test"]}
    ):
        uri = f"{FED}/query/profile?user_id=%40alice%3Atest"
        response = await client.get(uri, headers=signed_get(remote, uri))
        assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_federation_disabled(tmp_path: Path, db_url: str, clock: FakeClock) -> None:
    async for _, client in served_offline(tmp_path, db_url, clock, federation={"enabled": False}):
        response = await client.get(f"{FED}/version")
        assert (response.status_code, response.json()["errcode"]) == (404, "M_UNRECOGNIZED")
        # The key server still answers: our keys are public.
        assert (await client.get("/_matrix/key/v2/server")).status_code == 200


async def test_remote_profile_is_filtered_and_errors_are_ours(
    fed: tuple[Homeserver, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from homeserver.federation.client import FederationError

    hs, client = fed
    _, token = await register(client, "alice")
    answers: dict[str, Any] = {
        "ok.test": {"displayname": "Bob", "avatar_url": "mxc://ok.test/abc", "x": 1},
        "odd.test": {"displayname": 5, "avatar_url": "javascript:alert(1)"},
        "list.test": ["not", "a", "profile"],
        "long.test": {"displayname": "x" * 10_000},
        "missing.test": FederationError("missing.test", "404", status=404, errcode="M_NOT_FOUND"),
        "broken.test": FederationError("broken.test", "500", status=500, errcode="M_UNKNOWN"),
        "down.test": FederationError("down.test", "unreachable"),
    }

    async def query_profile(user_id: UserID) -> Any:
        answer = answers[user_id.server_name]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(hs.federation_queries, "query_profile", query_profile)
    expected = {
        "ok.test": (200, {"displayname": "Bob", "avatar_url": "mxc://ok.test/abc"}),
        "odd.test": (200, {}),
        "list.test": (200, {}),
        "long.test": (200, {}),
        "missing.test": (404, "M_NOT_FOUND"),
        "broken.test": (502, "M_UNKNOWN"),
        "down.test": (502, "M_UNKNOWN"),
    }
    for server, (status, body) in expected.items():
        response = await client.get(
            f"/_matrix/client/v3/profile/@bob:{server}", headers=auth_header(token)
        )
        assert response.status_code == status, server
        got = response.json() if status == 200 else response.json()["errcode"]
        assert got == body, server
    response = await client.get(
        "/_matrix/client/v3/profile/@bob:ok.test/displayname", headers=auth_header(token)
    )
    assert response.json() == {"displayname": "Bob"}


async def test_public_rooms_over_federation(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    for name in ("Lounge", "Garden"):
        r = await client.post(
            "/_matrix/client/v3/createRoom",
            headers=auth_header(token),
            json={"visibility": "public", "name": name},
        )
        assert r.status_code == 200, r.text
    path = f"{FED}/publicRooms"
    r = await client.get(path)
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")
    r = await client.get(path, headers=signed_get(remote, path))
    assert r.status_code == 200, r.text
    assert sorted(e["name"] for e in r.json()["chunk"]) == ["Garden", "Lounge"]
    uri = f"{path}?limit=1"
    r = await client.get(uri, headers=signed_get(remote, uri))
    assert len(r.json()["chunk"]) == 1 and "next_batch" in r.json()
    body = {"filter": {"generic_search_term": "gard"}}
    header = remote.authorization("test", "POST", path, body)
    r = await client.post(path, json=body, headers={"Authorization": header})
    assert [e["name"] for e in r.json()["chunk"]] == ["Garden"]
    for bad, errcode in (
        ([], "M_BAD_JSON"),
        ({"limit": "x"}, "M_BAD_JSON"),
        ({"limit": -1}, "M_BAD_JSON"),
    ):
        header = remote.authorization("test", "POST", path, bad)
        r = await client.post(path, json=bad, headers={"Authorization": header})
        assert (r.status_code, r.json()["errcode"]) == (400, errcode), bad
    uri = f"{path}?limit=x"
    r = await client.get(uri, headers=signed_get(remote, uri))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
