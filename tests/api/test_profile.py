"""Profiles: /profile/{userId} and its displayname and avatar_url fields."""

from __future__ import annotations

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.ids import UserID
from tests.helpers import assert_errors, auth_header, register
from tests.openapi_schema import assert_response_matches

PROFILE = "/_matrix/client/v3/profile"


async def test_new_user_profile(client: httpx.AsyncClient) -> None:
    user_id, _ = await register(client, "alice")
    response = await client.get(f"{PROFILE}/{user_id}")  # no access token needed
    assert response.status_code == 200
    assert response.json() == {"displayname": "alice"}
    assert_response_matches("GET", f"{PROFILE}/{user_id}", 200, response.json())


async def test_set_and_get_fields(
    client: httpx.AsyncClient, hs: Homeserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes: list[tuple[UserID, str | None, str | None]] = []
    update_everywhere = hs.memberships.update_profile_everywhere

    async def update_profile_everywhere(user_id: UserID) -> None:
        profile = await hs.account_store.get_profile(user_id)
        assert profile is not None
        changes.append((user_id, profile.displayname, profile.avatar_url))
        await update_everywhere(user_id)

    # The member events of a changed profile: what the profile service tells the rooms.
    monkeypatch.setattr(hs.memberships, "update_profile_everywhere", update_profile_everywhere)
    user_id, token = await register(client, "alice")
    response = await client.put(
        f"{PROFILE}/{user_id}/displayname",
        headers=auth_header(token),
        json={"displayname": "Alice Margatroid"},
    )
    assert response.status_code == 200 and response.json() == {}
    assert_response_matches("PUT", f"{PROFILE}/{user_id}/displayname", 200, response.json())
    response = await client.put(
        f"{PROFILE}/{user_id}/avatar_url",
        headers=auth_header(token),
        json={"avatar_url": "mxc://test/SDGdghriugerRg"},
    )
    assert response.status_code == 200
    response = await client.get(f"{PROFILE}/{user_id}/displayname")
    assert response.json() == {"displayname": "Alice Margatroid"}
    assert_response_matches("GET", f"{PROFILE}/{user_id}/displayname", 200, response.json())
    response = await client.get(f"{PROFILE}/{user_id}")
    assert response.json() == {
        "displayname": "Alice Margatroid",
        "avatar_url": "mxc://test/SDGdghriugerRg",
    }
    assert_response_matches("GET", f"{PROFILE}/{user_id}", 200, response.json())
    assert changes == [
        (user_id, "Alice Margatroid", None),
        (user_id, "Alice Margatroid", "mxc://test/SDGdghriugerRg"),
    ]


async def test_clear_fields(client: httpx.AsyncClient) -> None:
    user_id, token = await register(client, "alice")
    response = await client.put(
        f"{PROFILE}/{user_id}/displayname", headers=auth_header(token), json={"displayname": ""}
    )
    assert response.status_code == 200
    assert (await client.get(f"{PROFILE}/{user_id}")).json() == {}
    response = await client.get(f"{PROFILE}/{user_id}/displayname")
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_NOT_FOUND"
    await client.put(
        f"{PROFILE}/{user_id}/avatar_url",
        headers=auth_header(token),
        json={"avatar_url": "mxc://test/abc"},
    )
    response = await client.delete(f"{PROFILE}/{user_id}/avatar_url", headers=auth_header(token))
    assert response.status_code == 200
    assert (await client.get(f"{PROFILE}/{user_id}")).json() == {}


async def test_unknown_user(client: httpx.AsyncClient) -> None:
    for path in (
        f"{PROFILE}/@nobody:test",
        f"{PROFILE}/@nobody:test/displayname",
    ):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["errcode"] == "M_NOT_FOUND"
    # A remote user's profile is asked of their server; one that cannot be reached is a 502
    # of ours (as Synapse answers), never the remote server's error passed on.
    response = await client.get(f"{PROFILE}/@someone:elsewhere.invalid")
    assert (response.status_code, response.json()["errcode"]) == (502, "M_UNKNOWN")


async def test_invalid_user_id(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{PROFILE}/alice")
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_INVALID_PARAM"


async def test_only_ones_own_profile(client: httpx.AsyncClient) -> None:
    alice, _ = await register(client, "alice")
    _, bob = await register(client, "bob")
    for key in ("displayname", "avatar_url"):
        response = await client.put(
            f"{PROFILE}/{alice}/{key}", headers=auth_header(bob), json={key: ""}
        )
        assert response.status_code == 403
        assert response.json()["errcode"] == "M_FORBIDDEN"
    response = await client.delete(f"{PROFILE}/{alice}/displayname", headers=auth_header(bob))
    assert response.status_code == 403


async def test_set_bad_input(client: httpx.AsyncClient) -> None:
    user_id, token = await register(client, "alice")
    cases: list[tuple[str, object, int, str]] = [
        ("displayname", {"displayname": 1}, 400, "M_BAD_JSON"),
        ("displayname", {"displayname": None}, 400, "M_BAD_JSON"),
        ("displayname", {"displayname": "x" * 257}, 400, "M_INVALID_PARAM"),
        ("displayname", {}, 400, "M_MISSING_PARAM"),
        ("displayname", {"avatar_url": "mxc://test/abc"}, 400, "M_MISSING_PARAM"),
        ("displayname", [], 400, "M_BAD_JSON"),
        ("displayname", b"displayname=x", 400, "M_NOT_JSON"),
        ("avatar_url", {"avatar_url": "https://example.org/a.png"}, 400, "M_INVALID_PARAM"),
        ("avatar_url", {"avatar_url": "mxc://test"}, 400, "M_INVALID_PARAM"),
        ("avatar_url", {"avatar_url": "mxc://test/a/b"}, 400, "M_INVALID_PARAM"),
        ("avatar_url", {"avatar_url": "mxc://bad server/abc"}, 400, "M_INVALID_PARAM"),
        ("avatar_url", {"avatar_url": ["mxc://test/abc"]}, 400, "M_BAD_JSON"),
        ("Not A Key", {"Not A Key": "x"}, 400, "M_INVALID_PARAM"),
        # Well-formed but not supported here.
        ("m.tz", {"m.tz": "Europe/London"}, 403, "M_FORBIDDEN"),
    ]
    for key, data, status, errcode in cases:
        await assert_errors(
            client,
            "PUT",
            f"{PROFILE}/{user_id}/{key}",
            headers=auth_header(token),
            cases=[(data, status, errcode)],
        )


async def test_set_displayname_of_256_chars(client: httpx.AsyncClient) -> None:
    user_id, token = await register(client, "alice")
    response = await client.put(
        f"{PROFILE}/{user_id}/displayname",
        headers=auth_header(token),
        json={"displayname": "é" * 256},
    )
    assert response.status_code == 200


async def test_unsupported_field(client: httpx.AsyncClient) -> None:
    user_id, _ = await register(client, "alice")
    response = await client.get(f"{PROFILE}/{user_id}/m.tz")
    assert response.status_code == 404


async def test_set_needs_a_token(client: httpx.AsyncClient) -> None:
    user_id, _ = await register(client, "alice")
    response = await client.put(f"{PROFILE}/{user_id}/displayname", json={"displayname": "x"})
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_MISSING_TOKEN"
    response = await client.put(
        f"{PROFILE}/{user_id}/displayname",
        json={"displayname": "x"},
        headers=auth_header("mat_unknown"),
    )
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"


async def test_versions_and_the_profile_fields_capability(client: httpx.AsyncClient) -> None:
    # /versions names every version whose operations are served, up to the bundled spec's;
    # v1.16's m.profile_fields says which fields can be set: the two that exist.
    versions = (await client.get("/_matrix/client/versions")).json()["versions"]
    assert versions[-5:] == ["v1.15", "v1.16", "v1.17", "v1.18", "v1.19"]
    user_id, token = await register(client, "alice")
    r = await client.get("/_matrix/client/v3/capabilities", headers=auth_header(token))
    assert_response_matches("GET", "/_matrix/client/v3/capabilities", 200, r.json())
    fields = r.json()["capabilities"]["m.profile_fields"]
    assert fields == {"enabled": True, "allowed": ["displayname", "avatar_url"]}
    # The deprecated capabilities agree with it (spec: MUST).
    assert r.json()["capabilities"]["m.set_displayname"] == {"enabled": True}
    assert r.json()["capabilities"]["m.set_avatar_url"] == {"enabled": True}
    for field in fields["allowed"]:
        value = "Alice" if field == "displayname" else "mxc://test/abc"
        r = await client.put(
            f"/_matrix/client/v3/profile/{user_id}/{field}",
            headers=auth_header(token),
            json={field: value},
        )
        assert r.status_code == 200, r.text
    r = await client.put(
        f"/_matrix/client/v3/profile/{user_id}/m.tz",
        headers=auth_header(token),
        json={"m.tz": "Europe/Paris"},
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
