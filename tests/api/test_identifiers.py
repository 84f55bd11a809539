"""Identifier grammar at every entry point, and ambiguous credentials (issue 16)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import yaml

from homeserver.cli import main
from tests.helpers import DEFAULT_PASSWORD, auth_header, create_room, register

# Every class of character outside the grammars, as a suffix (the finding: a trailing
# newline) and inside.
BAD_CHARS = ["\n", "\r", "\t", " ", "\x7f", "é", "\u00a0", "\u2028", "\U0001f600"]


def _json_escaped(localpart: str) -> bytes:
    import json

    return json.dumps(
        {"username": localpart, "password": DEFAULT_PASSWORD, "auth": {"type": "m.login.dummy"}}
    ).encode()


def _refused(r: httpx.Response, what: str) -> None:
    """400 from the grammar, or 404 where a newline in the path keeps it from matching any
    route (Starlette's mounts match ``.*``, which stops at a newline)."""
    got = (r.status_code, r.json()["errcode"])
    assert got in ((400, "M_INVALID_PARAM"), (404, "M_UNRECOGNIZED")), (what, r.text)


async def test_register_refuses_every_bad_character(client: httpx.AsyncClient) -> None:
    for char in [*BAD_CHARS, "\x00"]:
        for username in (f"nl-test-{char}", f"a{char}b"):
            r = await client.post("/_matrix/client/v3/register", content=_json_escaped(username))
            assert r.status_code == 400, (username, r.text)
            # NUL is refused with the JSON (M_BAD_JSON), the rest by the grammar.
            assert r.json()["errcode"] in ("M_INVALID_USERNAME", "M_BAD_JSON"), username
    r = await client.get("/_matrix/client/v3/register/available", params={"username": "nl-test-\n"})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_USERNAME")
    # The Kelvin sign lowers to "k": not a way to reach another user ID.
    r = await client.post("/_matrix/client/v3/register", content=_json_escaped("\u212aarl"))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_USERNAME")


async def test_login_identifiers(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    for user in [f"alice{c}" for c in BAD_CHARS] + [f"@alice:test{c}" for c in BAD_CHARS]:
        r = await client.post(
            "/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": DEFAULT_PASSWORD,
            },
        )
        assert r.status_code == 403, (user, r.text)
    r = await client.post(
        "/_matrix/client/v3/login",
        json={"type": "m.login.password", "password": DEFAULT_PASSWORD, "device_id": "D\nX"}
        | {"identifier": {"type": "m.id.user", "user": "alice"}},
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_invites_profiles_and_path_parameters(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    await register(client, "bob")
    room = await create_room(client, token)
    h = auth_header(token)
    for char in BAD_CHARS:
        for bad_user in (f"@bob:test{char}", f"@bob{char}:test"):
            r = await client.post(
                f"/_matrix/client/v3/rooms/{quote(room)}/invite",
                json={"user_id": bad_user},
                headers=h,
            )
            assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), bad_user
            r = await client.get(f"/_matrix/client/v3/profile/{quote(bad_user)}", headers=h)
            _refused(r, bad_user)
        for path in (
            f"/_matrix/client/v3/rooms/{quote(room + char)}/messages",
            f"/_matrix/client/v3/rooms/{quote(room)}/event/{quote('$abc' + char)}",
            f"/_matrix/client/v3/rooms/{quote(room)}/context/{quote('$abc' + char)}",
            f"/_matrix/client/v1/rooms/{quote(room)}/relations/{quote('$abc' + char)}",
            f"/_matrix/client/v3/directory/room/{quote('#a:test' + char)}",
        ):
            r = await client.get(path, headers=h)
            _refused(r, path)
        # New aliases: no whitespace nor control characters.
        if char not in ("é", "\U0001f600"):
            r = await client.put(
                f"/_matrix/client/v3/directory/room/{quote('#new' + char + 'x:test')}",
                json={"room_id": room},
                headers=h,
            )
            _refused(r, char)
            r = await client.post(
                "/_matrix/client/v3/createRoom",
                json={"room_alias_name": f"new{char}x"},
                headers=h,
            )
            assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), char
    # NUL anywhere in the path or the query: refused before routing (PostgreSQL's text
    # cannot hold it).
    for path in (
        f"/_matrix/client/v3/user/{quote(alice)}/account_data/m.x%00",
        f"/_matrix/client/v3/rooms/{quote(room)}/state/m.x%00/k",
        "/_matrix/client/v3/sync?since=%00",
    ):
        r = await client.get(path, headers=h)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), path
    r = await client.put(
        f"/_matrix/client/v3/rooms/{quote(room)}/send/m.x%00/t1", json={}, headers=h
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_token_in_header_and_query_is_refused(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    r = await client.get(
        "/_matrix/client/v3/account/whoami",
        params={"access_token": token},
        headers=auth_header(token),
    )
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    for kwargs in ({"params": {"access_token": token}}, {"headers": auth_header(token)}):
        r = await client.get("/_matrix/client/v3/account/whoami", **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_register_user_cli_refuses_bad_localparts(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "homeserver.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server_name": "test",
                "data_dir": str(tmp_path),
                "database": {"url": db_url},
                "auth": {"password_hash_memory_kib": 64, "password_hash_time_cost": 1},
            }
        )
    )
    for char in [*BAD_CHARS, "\x00", ":"]:
        code = main(["-c", str(config), "register-user", f"nl-test-{char}", "--password", "x" * 12])
        assert code == 1, repr(char)
        assert "M_INVALID_USERNAME" in capsys.readouterr().err
    assert main(["-c", str(config), "register-user", "fine", "--password", "x" * 12]) == 0
