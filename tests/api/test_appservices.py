"""Application services: the as_token and masquerading, registration and login of their
users, exclusive namespaces, transactions (with retries and restarts), queries, the ping
and third-party lookups, against a stand-in service on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.config import HomeserverConfig
from tests.appservice_helpers import (
    AS_TOKEN,
    HS_TOKEN,
    FakeAppService,
    registration,
    write_registration,
)
from tests.conftest import make_config
from tests.helpers import auth_header, checked, create_room, register, serve
from tests.push_servers import free_port, until, until_async

AS = auth_header(AS_TOKEN)
NOURL_TOKEN = "nourl-as-token"
DOWN_TOKEN = "down-as-token"


def _config(
    tmp_path: Path, db_url: str, fake: FakeAppService, **overrides: Any
) -> HomeserverConfig:
    files = [
        write_registration(tmp_path / "bridge.yaml", registration(fake.url)),
        # No URL: nothing is pushed to it, its ping is M_URL_NOT_SET.
        write_registration(
            tmp_path / "nourl.yaml",
            registration(
                None,
                id="nourl",
                as_token=NOURL_TOKEN,
                hs_token="nourl-hs-token",
                sender_localpart="nourlbot",
                namespaces={"users": [{"exclusive": False, "regex": "@nourl_.*:test"}]},
                protocols=[],
            ),
        ),
        # Nothing listens at its URL.
        write_registration(
            tmp_path / "down.yaml",
            registration(
                f"http://127.0.0.1:{free_port()}",
                id="down",
                as_token=DOWN_TOKEN,
                hs_token="down-hs-token",
                sender_localpart="downbot",
                namespaces={"users": [{"exclusive": True, "regex": "@down_.*:test"}]},
                protocols=[],
            ),
        ),
    ]
    overrides.setdefault("appservice", {"retry_initial_ms": 1000, "request_timeout_ms": 10_000})
    return make_config(tmp_path, db_url, app_service_config_files=files, **overrides)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAppService]:
    async with FakeAppService() as service:
        yield service


@pytest.fixture
async def bridge(
    tmp_path: Path, db_url: str, fake: FakeAppService, clock: FakeClock
) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient]]:
    async with serve(_config(tmp_path, db_url, fake), clock) as served:
        yield served


async def as_register(client: httpx.AsyncClient, localpart: str, **extra: Any) -> httpx.Response:
    return await client.post(
        "/_matrix/client/v3/register",
        headers=AS,
        json={"type": "m.login.application_service", "username": localpart, **extra},
    )


async def whoami(client: httpx.AsyncClient, query: str = "", token: str = AS_TOKEN) -> Any:
    return await client.get(f"/_matrix/client/v3/account/whoami{query}", headers=auth_header(token))


# --- acting as users ------------------------------------------------------------------------


async def test_as_token_acts_as_the_sender(bridge: tuple[Homeserver, httpx.AsyncClient]) -> None:
    _, client = bridge
    assert checked(await whoami(client))["user_id"] == "@bridgebot:test"
    # The sender exists as a user from start-up: it has a profile.
    r = await client.get("/_matrix/client/v3/profile/@bridgebot:test")
    assert r.status_code == 200


async def test_registering_users_of_the_namespace(
    bridge: tuple[Homeserver, httpx.AsyncClient],
) -> None:
    _, client = bridge
    body = checked(await as_register(client, "bridge_alice"))
    assert body["user_id"] == "@bridge_alice:test"
    # The new user's own token works.
    assert checked(await whoami(client, token=body["access_token"]))["user_id"] == body["user_id"]
    # inhibit_login: no token.
    body = checked(await as_register(client, "bridge_bob", inhibit_login=True))
    assert "access_token" not in body
    assert (await as_register(client, "bridge_alice")).json()["errcode"] == "M_USER_IN_USE"
    # Outside its namespaces (another service's, or nobody's).
    checked(await as_register(client, "alice"), 400, "M_EXCLUSIVE")
    checked(await as_register(client, "down_x"), 400, "M_EXCLUSIVE")
    r = await client.post(
        "/_matrix/client/v3/register",
        json={"type": "m.login.application_service", "username": "bridge_carol"},
    )
    checked(r, 401, "M_MISSING_TOKEN", documented=False)
    _, user_token = await register(client, "dave")
    r = await client.post(
        "/_matrix/client/v3/register",
        headers=auth_header(user_token),
        json={"type": "m.login.application_service", "username": "bridge_carol"},
    )
    checked(r, 401, "M_UNKNOWN_TOKEN", documented=False)
    r = await client.post(
        "/_matrix/client/v3/register",
        headers=AS,
        json={"type": "m.login.application_service"},
    )
    checked(r, 400, "M_MISSING_PARAM", documented=False)


async def test_registration_closed_to_users_is_open_to_services(
    tmp_path: Path, db_url: str, fake: FakeAppService, clock: FakeClock
) -> None:
    config = _config(tmp_path, db_url, fake, registration={"enabled": False})
    async with serve(config, clock) as (_, client):
        checked(await as_register(client, "bridge_alice"))
        r = await client.post(
            "/_matrix/client/v3/register",
            json={"username": "alice", "password": "x" * 12, "auth": {"type": "m.login.dummy"}},
        )
        assert r.json()["errcode"] == "M_FORBIDDEN"


async def test_exclusive_namespaces_are_refused_to_users(
    bridge: tuple[Homeserver, httpx.AsyncClient],
) -> None:
    _, client = bridge
    for localpart in ("bridge_mallory", "bridgebot", "down_x"):
        r = await client.post(
            "/_matrix/client/v3/register",
            json={
                "username": localpart,
                "password": "correct horse battery",
                "auth": {"type": "m.login.dummy"},
            },
        )
        checked(r, 400, "M_EXCLUSIVE")
        r = await client.get(f"/_matrix/client/v3/register/available?username={localpart}")
        checked(r, 400, "M_EXCLUSIVE")
    # A non-exclusive namespace stays open to users.
    await register(client, "nourl_alice")
    # Aliases: a user may not take one of the exclusive namespace; the service may.
    _, token = await register(client, "alice")
    r = await client.post(
        "/_matrix/client/v3/createRoom",
        headers=auth_header(token),
        json={"room_alias_name": "bridge_general"},
    )
    checked(r, 400, "M_EXCLUSIVE")
    room_id = await create_room(client, token)
    r = await client.put(
        "/_matrix/client/v3/directory/room/%23bridge_general:test",
        headers=auth_header(token),
        json={"room_id": room_id},
    )
    checked(r, 400, "M_EXCLUSIVE")
    r = await client.post(
        "/_matrix/client/v3/createRoom", headers=AS, json={"room_alias_name": "bridge_general"}
    )
    checked(r)


async def test_masquerading_as_users_and_devices(
    bridge: tuple[Homeserver, httpx.AsyncClient],
) -> None:
    _, client = bridge
    session = checked(await as_register(client, "bridge_alice"))
    me = checked(await whoami(client, "?user_id=@bridge_alice:test"))
    assert me["user_id"] == "@bridge_alice:test"
    # The device must exist: the one the registration made does.
    device = session["device_id"]
    me = checked(await whoami(client, f"?user_id=@bridge_alice:test&device_id={device}"))
    assert me["device_id"] == device
    query = f"?user_id=@bridge_alice:test&org.matrix.msc3202.device_id={device}"
    assert checked(await whoami(client, query))["device_id"] == device
    r = await whoami(client, "?user_id=@bridge_alice:test&device_id=NOPE")
    checked(r, 400, "M_UNKNOWN_DEVICE", documented=False)
    # Outside the namespace, or not registered: 403.
    await register(client, "alice")
    checked(await whoami(client, "?user_id=@alice:test"), 403, "M_FORBIDDEN", documented=False)
    r = await whoami(client, "?user_id=@bridge_nobody:test")
    checked(r, 403, "M_FORBIDDEN", documented=False)
    r = await whoami(client, "?user_id=not-a-user")
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    # A user's own token ignores user_id (only services assert identities).
    _, token = await register(client, "bob")
    me = checked(await whoami(client, "?user_id=@bridge_alice:test", token=token))
    assert me["user_id"] == "@bob:test"


async def test_login_as_a_user_of_the_namespace(
    bridge: tuple[Homeserver, httpx.AsyncClient],
) -> None:
    _, client = bridge
    checked(await as_register(client, "bridge_alice", inhibit_login=True))
    flows = checked(await client.get("/_matrix/client/v3/login"))["flows"]
    assert {"type": "m.login.application_service"} in flows

    async def login(user: str, headers: dict[str, str] | None = AS) -> httpx.Response:
        return await client.post(
            "/_matrix/client/v3/login",
            headers=headers,
            json={
                "type": "m.login.application_service",
                "identifier": {"type": "m.id.user", "user": user},
                "device_id": "BRIDGEDEV",
            },
        )

    body = checked(await login("bridge_alice"))
    assert body["user_id"] == "@bridge_alice:test" and body["device_id"] == "BRIDGEDEV"
    query = "?user_id=@bridge_alice:test&device_id=BRIDGEDEV"
    assert checked(await whoami(client, query))["device_id"] == "BRIDGEDEV"
    await register(client, "alice")
    checked(await login("alice"), 403, "M_FORBIDDEN")
    checked(await login("bridge_nobody"), 403, "M_FORBIDDEN")
    checked(await login("bridge_alice", None), 401, "M_MISSING_TOKEN", documented=False)


async def test_users_of_unlimited_services_are_not_rate_limited(
    tmp_path: Path, db_url: str, fake: FakeAppService, clock: FakeClock
) -> None:
    limits = {"enabled": True, "message": {"per_second": 0.001, "burst": 2}}
    async with serve(_config(tmp_path, db_url, fake, rate_limits=limits), clock) as (_, client):
        checked(await as_register(client, "bridge_alice", inhibit_login=True))
        _, token = await register(client, "alice")
        room_id = await create_room(client, token, preset="public_chat")
        puppet = "?user_id=@bridge_alice:test"
        checked(await client.post(f"/_matrix/client/v3/join/{room_id}{puppet}", headers=AS))
        for i in range(5):
            r = await client.put(
                f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/p{i}{puppet}",
                headers=AS,
                json={"msgtype": "m.text", "body": str(i)},
            )
            checked(r)
        statuses = []
        for i in range(3):
            r = await client.put(
                f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/u{i}",
                headers=auth_header(token),
                json={"msgtype": "m.text", "body": str(i)},
            )
            statuses.append(r.status_code)
        assert statuses[-1] == 429


# --- transactions -----------------------------------------------------------------------------


async def _puppet_in_room(client: httpx.AsyncClient) -> tuple[str, str]:
    """alice's room with the bridge's puppet joined; (alice's token, room ID)."""
    checked(await as_register(client, "bridge_puppet", inhibit_login=True))
    _, token = await register(client, "alice")
    return await _puppet_in_room_as(client, token)


async def _puppet_in_room_as(client: httpx.AsyncClient, token: str) -> tuple[str, str]:
    room_id = await create_room(client, token, preset="public_chat")
    r = await client.post(
        f"/_matrix/client/v3/join/{room_id}?user_id=@bridge_puppet:test", headers=AS
    )
    checked(r)
    return token, room_id


async def _send(client: httpx.AsyncClient, token: str, room_id: str, body: str) -> str:
    r = await client.put(
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{body}",
        headers=auth_header(token),
        json={"msgtype": "m.text", "body": body},
    )
    return str(checked(r)["event_id"])


def _delivered(fake: FakeAppService, event_id: str) -> int:
    return sum(1 for e in fake.events() if e["event_id"] == event_id)


async def test_events_that_concern_the_service_are_pushed(
    bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService
) -> None:
    _, client = bridge
    token, room_id = await _puppet_in_room(client)
    # A room without the service's users stays private to it.
    other_room = await create_room(client, token)
    hidden = await _send(client, token, other_room, "hidden")
    seen = await _send(client, token, room_id, "hello")
    await until(lambda: _delivered(fake, seen) == 1)
    assert _delivered(fake, hidden) == 0
    event = next(e for e in fake.events() if e["event_id"] == seen)
    assert event["room_id"] == room_id and event["content"]["body"] == "hello"
    assert event["sender"] == "@alice:test" and "unsigned" in event
    # The puppet's own join (its member event) came too.
    assert any(
        e["type"] == "m.room.member" and e["state_key"] == "@bridge_puppet:test"
        for e in fake.events()
    )
    assert set(fake.authorizations) == {f"Bearer {HS_TOKEN}"}
    ids = [int(txn_id) for txn_id, _ in fake.transactions]
    assert ids == sorted(set(ids))


async def test_ephemeral_events_are_pushed(
    bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService
) -> None:
    _, client = bridge
    token, room_id = await _puppet_in_room(client)
    r = await client.put(
        f"/_matrix/client/v3/rooms/{room_id}/typing/@alice:test",
        headers=auth_header(token),
        json={"typing": True, "timeout": 30000},
    )
    checked(r)
    event_id = await _send(client, token, room_id, "read-me")
    r = await client.post(
        f"/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{event_id}",
        headers=auth_header(token),
        json={},
    )
    checked(r)

    def found(kind: str) -> list[dict[str, Any]]:
        return [e for e in fake.ephemeral() if e["type"] == kind]

    await until(lambda: bool(found("m.typing")) and bool(found("m.receipt")))
    typing = found("m.typing")[0]
    assert typing["room_id"] == room_id and typing["content"]["user_ids"] == ["@alice:test"]
    receipt = found("m.receipt")[-1]
    assert receipt["room_id"] == room_id
    assert "@alice:test" in receipt["content"][event_id]["m.read"]
    # MSC2409's name carries the same list, for bridges made before spec v1.13.
    body = next(b for _, b in fake.transactions if "ephemeral" in b)
    assert body["de.sorunome.msc2409.ephemeral"] == body["ephemeral"]


async def test_a_failed_transaction_is_retried_with_back_off(
    bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService, clock: FakeClock
) -> None:
    hs, client = bridge
    token, room_id = await _puppet_in_room(client)
    await until(lambda: bool(fake.transactions))
    fake.status = 500
    attempts_before = len(fake.authorizations)
    event_id = await _send(client, token, room_id, "retry-me")
    await until(lambda: len(fake.authorizations) > attempts_before)
    await until_async(lambda: _queued(hs, 1))
    # Not due yet: nothing is sent.
    sent = len(fake.authorizations)
    assert await hs.appservice_sender.run_once("bridge") == 1000
    assert len(fake.authorizations) == sent
    # Due, still failing: the back-off doubles.
    clock.advance(1000)
    assert await hs.appservice_sender.run_once("bridge") == 2000
    assert _delivered(fake, event_id) == 0
    fake.status = 200
    clock.advance(2000)
    await hs.appservice_sender.run_once("bridge")
    await until(lambda: _delivered(fake, event_id) == 1)
    await until_async(lambda: _queued(hs, 0))
    ids = [int(txn_id) for txn_id, _ in fake.transactions]
    assert ids == sorted(set(ids))  # the retried transaction kept its number, once taken


async def _queued(hs: Homeserver, count: int) -> bool:
    return await hs.appservice_sender.queue_length("bridge") == count


async def test_the_queue_survives_a_restart(
    tmp_path: Path, db_url: str, fake: FakeAppService, clock: FakeClock
) -> None:
    config = _config(tmp_path, db_url, fake)
    async with serve(config, clock) as (hs, client):
        token, room_id = await _puppet_in_room(client)
        await until(lambda: bool(fake.transactions))
        fake.status = 503
        event_ids = [await _send(client, token, room_id, f"m{i}") for i in range(3)]
        await until_async(lambda: _queued(hs, 1))
    fake.status = 200
    clock.advance(60_000)
    async with serve(config, clock) as (hs, client):
        event_ids.append(await _send(client, token, room_id, "after"))
        await until(lambda: all(_delivered(fake, e) == 1 for e in event_ids))
        await until_async(lambda: _queued(hs, 0))
    ids = [int(txn_id) for txn_id, _ in fake.transactions]
    assert ids == sorted(set(ids))
    assert all(_delivered(fake, e) == 1 for e in event_ids)


async def test_one_dead_service_does_not_hold_up_another(
    bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService
) -> None:
    hs, client = bridge
    token, room_id = await _puppet_in_room(client)
    # The "down" service's puppet in the same room: its transactions fail, forever.
    r = await client.post(
        "/_matrix/client/v3/register",
        headers=auth_header(DOWN_TOKEN),
        json={"type": "m.login.application_service", "username": "down_x"},
    )
    checked(r)
    r = await client.post(
        f"/_matrix/client/v3/join/{room_id}?user_id=@down_x:test",
        headers=auth_header(DOWN_TOKEN),
    )
    checked(r)
    for i in range(3):
        event_id = await _send(client, token, room_id, f"x{i}")
        await until(lambda: _delivered(fake, event_id) == 1)  # noqa: B023
    await until_async(
        lambda: _nonzero(hs.appservice_sender.queue_length("down")),
    )


async def _nonzero(count: Any) -> bool:
    return bool(await count)


# --- queries --------------------------------------------------------------------------------


async def test_an_unknown_user_of_the_namespace_is_asked_of_the_service(
    bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService
) -> None:
    _, client = bridge
    _, token = await register(client, "alice")
    room_id = await create_room(client, token)

    async def create_user(user_id: str) -> bool:
        localpart = user_id[1:].split(":")[0]
        return (await as_register(client, localpart, inhibit_login=True)).status_code == 200

    fake.on_user = create_user
    r = await client.post(
        f"/_matrix/client/v3/rooms/{room_id}/invite",
        headers=auth_header(token),
        json={"user_id": "@bridge_new:test"},
    )
    checked(r)
    assert fake.user_queries == ["@bridge_new:test"]
    # A user outside every namespace is not asked about.
    r = await client.post(
        f"/_matrix/client/v3/rooms/{room_id}/invite",
        headers=auth_header(token),
        json={"user_id": "@stranger:test"},
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    # The service says no: the user stays unknown.
    fake.on_user = None
    r = await client.post(
        f"/_matrix/client/v3/rooms/{room_id}/invite",
        headers=auth_header(token),
        json={"user_id": "@bridge_ghost:test"},
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    assert fake.user_queries == ["@bridge_new:test", "@bridge_ghost:test"]
    # A profile lookup asks too.
    r = await client.get(
        "/_matrix/client/v3/profile/@bridge_ghost:test", headers=auth_header(token)
    )
    checked(r, 404, "M_NOT_FOUND")
    fake.on_user = create_user
    r = await client.get(
        "/_matrix/client/v3/profile/@bridge_shown:test", headers=auth_header(token)
    )
    assert checked(r)["displayname"] == "bridge_shown"
    assert fake.user_queries[-2:] == ["@bridge_ghost:test", "@bridge_shown:test"]


async def test_an_unknown_alias_of_the_namespace_is_asked_of_the_service(
    bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService
) -> None:
    _, client = bridge
    _, token = await register(client, "alice")

    async def create_room_for(alias: str) -> bool:
        localpart = alias[1:].split(":")[0]
        r = await client.post(
            "/_matrix/client/v3/createRoom", headers=AS, json={"room_alias_name": localpart}
        )
        return r.status_code == 200

    fake.on_alias = create_room_for
    r = await client.get(
        "/_matrix/client/v3/directory/room/%23bridge_irc_chan:test", headers=auth_header(token)
    )
    assert checked(r)["room_id"].startswith("!")
    assert fake.alias_queries == ["#bridge_irc_chan:test"]
    fake.on_alias = None
    r = await client.get(
        "/_matrix/client/v3/directory/room/%23bridge_nothing:test", headers=auth_header(token)
    )
    checked(r, 404, "M_NOT_FOUND")
    r = await client.get(
        "/_matrix/client/v3/directory/room/%23elsewhere:test", headers=auth_header(token)
    )
    checked(r, 404, "M_NOT_FOUND")
    assert fake.alias_queries == ["#bridge_irc_chan:test", "#bridge_nothing:test"]


# --- ping ---------------------------------------------------------------------------------------


async def _ping(
    client: httpx.AsyncClient, service_id: str, token: str, body: Any
) -> httpx.Response:
    return await client.post(
        f"/_matrix/client/v1/appservice/{service_id}/ping",
        headers=auth_header(token),
        json=body,
    )


async def test_ping(bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService) -> None:
    _, client = bridge
    body = checked(await _ping(client, "bridge", AS_TOKEN, {"transaction_id": "t1"}))
    assert isinstance(body["duration_ms"], int)
    assert fake.pings == [{"transaction_id": "t1"}]
    checked(await _ping(client, "bridge", AS_TOKEN, {}))
    assert fake.pings[-1] == {}
    fake.ping_status = 500
    body = checked(await _ping(client, "bridge", AS_TOKEN, {}), 502, "M_BAD_STATUS")
    assert body["status"] == 500 and body["body"] == "bridge is sad"
    checked(await _ping(client, "nourl", NOURL_TOKEN, {}), 400, "M_URL_NOT_SET")
    checked(await _ping(client, "down", DOWN_TOKEN, {}), 502, "M_CONNECTION_FAILED")
    # Only the service's own token may ping it.
    checked(await _ping(client, "bridge", DOWN_TOKEN, {}), 403, "M_FORBIDDEN")
    checked(await _ping(client, "nope", AS_TOKEN, {}), 403, "M_FORBIDDEN")
    _, token = await register(client, "alice")
    checked(await _ping(client, "bridge", token, {}), 403, "M_FORBIDDEN")
    checked(await _ping(client, "bridge", AS_TOKEN, {"transaction_id": 5}), 400, "M_BAD_JSON")
    r = await client.post(
        "/_matrix/client/v1/appservice/bridge/ping", headers=AS, content=b"not json"
    )
    checked(r, 400, "M_NOT_JSON")


async def test_ping_timeout(
    tmp_path: Path, db_url: str, fake: FakeAppService, clock: FakeClock
) -> None:
    config = _config(tmp_path, db_url, fake, appservice={"request_timeout_ms": 300})
    release = asyncio.Event()
    async with serve(config, clock) as (_, client):
        fake.ping_delay = release
        r = await _ping(client, "bridge", AS_TOKEN, {})
        release.set()
        checked(r, 504, "M_CONNECTION_TIMEOUT")


# --- third-party networks -----------------------------------------------------------------------


async def test_thirdparty_lookups_are_asked_of_the_services(
    bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService
) -> None:
    _, client = bridge
    _, token = await register(client, "alice")
    h = auth_header(token)
    protocols = checked(await client.get("/_matrix/client/v3/thirdparty/protocols", headers=h))
    assert list(protocols) == ["irc"]
    assert protocols["irc"]["instances"][0]["instance_id"]
    irc = checked(await client.get("/_matrix/client/v3/thirdparty/protocol/irc", headers=h))
    assert irc["user_fields"] == ["network", "nickname"]
    r = await client.get("/_matrix/client/v3/thirdparty/protocol/xmpp", headers=h)
    checked(r, 404, "M_NOT_FOUND")
    r = await client.get(
        "/_matrix/client/v3/thirdparty/location/irc?network=irc.example&channel=%23chan", headers=h
    )
    locations = checked(r)
    assert locations[0]["alias"] == "#bridge_irc_test:test"
    assert fake.lookups[-1] == ("location/irc", {"network": "irc.example", "channel": "#chan"})
    r = await client.get("/_matrix/client/v3/thirdparty/user/irc?nickname=nick", headers=h)
    assert checked(r)[0]["userid"] == "@bridge_nick:test"
    r = await client.get("/_matrix/client/v3/thirdparty/user/xmpp", headers=h)
    checked(r, 404, "M_NOT_FOUND")
    r = await client.get(
        "/_matrix/client/v3/thirdparty/location?alias=%23bridge_irc_test:test", headers=h
    )
    assert checked(r)[0]["protocol"] == "irc"
    r = await client.get("/_matrix/client/v3/thirdparty/user?userid=@bridge_nick:test", headers=h)
    assert checked(r)[0]["protocol"] == "irc"
    r = await client.get("/_matrix/client/v3/thirdparty/user?userid=@nobody:test", headers=h)
    checked(r, 404, "M_NOT_FOUND")
    checked(
        await client.get("/_matrix/client/v3/thirdparty/location", headers=h),
        400,
        "M_MISSING_PARAM",
        documented=False,
    )
    checked(
        await client.get("/_matrix/client/v3/thirdparty/user", headers=h),
        400,
        "M_MISSING_PARAM",
        documented=False,
    )
    r = await client.get("/_matrix/client/v3/thirdparty/protocols")
    checked(r, 401, "M_MISSING_TOKEN", documented=False)


async def test_to_device_messages_of_the_services_users(
    tmp_path: Path, db_url: str, fake: FakeAppService, clock: FakeClock
) -> None:
    config = _config(
        tmp_path, db_url, fake, appservice={"retry_initial_ms": 1000, "to_device_messages": True}
    )
    async with serve(config, clock) as (_, client):
        session = checked(await as_register(client, "bridge_puppet", device_id="PUPPETDEV"))
        _, token = await register(client, "alice")
        r = await client.put(
            "/_matrix/client/v3/sendToDevice/m.room_key_request/t1",
            headers=auth_header(token),
            json={
                "messages": {
                    "@bridge_puppet:test": {"PUPPETDEV": {"action": "request"}},
                    "@alice:test": {"*": {"action": "request"}},
                }
            },
        )
        checked(r)

        def to_device() -> list[dict[str, Any]]:
            return [
                m
                for _, body in fake.transactions
                for m in body.get("de.sorunome.msc2409.to_device", [])
            ]

        await until(lambda: bool(to_device()))
        assert to_device() == [
            {
                "type": "m.room_key_request",
                "sender": "@alice:test",
                "content": {"action": "request"},
                "to_user_id": "@bridge_puppet:test",
                "to_device_id": session["device_id"],
            }
        ]


async def test_to_device_messages_are_not_sent_unless_turned_on(
    bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService
) -> None:
    hs, client = bridge
    checked(await as_register(client, "bridge_puppet", device_id="PUPPETDEV"))
    _, token = await register(client, "alice")
    r = await client.put(
        "/_matrix/client/v3/sendToDevice/m.room_key_request/t1",
        headers=auth_header(token),
        json={"messages": {"@bridge_puppet:test": {"PUPPETDEV": {"action": "request"}}}},
    )
    checked(r)
    # A message to a namespaced user's device afterwards, in a room: the round that sends
    # it has read past the to-device message too.
    token2, room_id = await _puppet_in_room_as(client, token)
    event_id = await _send(client, token2, room_id, "later")
    await until(lambda: _delivered(fake, event_id) == 1)
    assert not any("de.sorunome.msc2409.to_device" in body for _, body in fake.transactions)


async def test_services_manage_their_users_devices(
    bridge: tuple[Homeserver, httpx.AsyncClient],
) -> None:
    _, client = bridge
    checked(await as_register(client, "bridge_alice", inhibit_login=True))
    me = checked(await whoami(client, "?user_id=@bridge_alice:test"))
    assert "device_id" not in me  # acting without a device
    puppet = "?user_id=@bridge_alice:test"
    r = await client.put(
        f"/_matrix/client/v3/devices/BRIDGEDEV{puppet}", headers=AS, json={"display_name": "b"}
    )
    checked(r, 201)
    r = await client.put(f"/_matrix/client/v3/devices/BRIDGEDEV{puppet}", headers=AS, json={})
    checked(r, 200)
    me = checked(await whoami(client, f"{puppet}&device_id=BRIDGEDEV"))
    assert me["device_id"] == "BRIDGEDEV"
    r = await client.get(f"/_matrix/client/v3/devices/BRIDGEDEV{puppet}", headers=AS)
    # null last_seen_ip (never seen), which matrix-nio needs present: not the spec's schema.
    assert checked(r, documented=False)["display_name"] == "b"
    # Deleted without user-interactive authentication.
    checked(await client.delete(f"/_matrix/client/v3/devices/BRIDGEDEV{puppet}", headers=AS))
    r = await whoami(client, f"{puppet}&device_id=BRIDGEDEV")
    checked(r, 400, "M_UNKNOWN_DEVICE", documented=False)
    # A user still cannot create a device that way, nor delete one without UIA.
    _, token = await register(client, "alice")
    r = await client.put("/_matrix/client/v3/devices/NEWDEV", headers=auth_header(token), json={})
    checked(r, 404, "M_NOT_FOUND", documented=False)
    r = await client.post(
        "/_matrix/client/v3/delete_devices", headers=auth_header(token), json={"devices": ["X"]}
    )
    assert r.status_code == 401 and "flows" in r.json()


async def test_bad_inputs_of_application_service_requests(
    bridge: tuple[Homeserver, httpx.AsyncClient],
) -> None:
    _, client = bridge
    checked(await as_register(client, "Bridge Alice"), 400, "M_INVALID_USERNAME")
    checked(await as_register(client, "bridge_x", device_id=""), 400, "M_INVALID_PARAM")
    r = await client.post(
        "/_matrix/client/v3/register",
        headers=AS,
        json={"type": "m.login.application_service", "username": 5},
    )
    checked(r, 400, "M_BAD_JSON")
    r = await client.post(
        "/_matrix/client/v3/login",
        headers=AS,
        json={
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "a@b.c"},
        },
    )
    checked(r, 400, "M_UNKNOWN")
    r = await client.post(
        "/_matrix/client/v3/login", headers=AS, json={"type": "m.login.application_service"}
    )
    checked(r, 400, "M_MISSING_PARAM")
    r = await client.post(
        "/_matrix/client/v1/appservice/bridge/ping", headers=AS, json=["not", "an", "object"]
    )
    checked(r, 400, "M_BAD_JSON")
    r = await client.post(
        "/_matrix/client/v1/appservice/bridge/ping",
        headers=AS,
        json={"transaction_id": "x" * 300},
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)


async def test_long_runs_of_events_are_split_into_transactions(
    tmp_path: Path, db_url: str, fake: FakeAppService, clock: FakeClock
) -> None:
    config = _config(tmp_path, db_url, fake, appservice={"max_events_per_transaction": 2})
    async with serve(config, clock) as (hs, client):
        token, room_id = await _puppet_in_room(client)
        await until(lambda: bool(fake.transactions))
        fake.status = 503  # hold them up, so that they pile up behind one transaction
        event_ids = [await _send(client, token, room_id, f"m{i}") for i in range(7)]
        fake.status = 200
        clock.advance(60_000)
        await hs.appservice_sender.run_once("bridge")
        await until(lambda: all(_delivered(fake, e) == 1 for e in event_ids))
        assert all(len(body["events"]) <= 2 for _, body in fake.transactions)
        order = [e["event_id"] for e in fake.events() if e["event_id"] in event_ids]
        assert order == event_ids


async def test_presence_of_users_sharing_a_room(
    bridge: tuple[Homeserver, httpx.AsyncClient], fake: FakeAppService
) -> None:
    _, client = bridge
    token, _ = await _puppet_in_room(client)
    _, stranger = await register(client, "stranger")
    for who, tok in (("alice", token), ("stranger", stranger)):
        r = await client.put(
            f"/_matrix/client/v3/presence/@{who}:test/status",
            headers=auth_header(tok),
            json={"presence": "online", "status_msg": f"{who} here"},
        )
        checked(r)

    def presence_of(user_id: str) -> list[dict[str, Any]]:
        return [e for e in fake.ephemeral() if e["type"] == "m.presence" and e["sender"] == user_id]

    await until(lambda: bool(presence_of("@alice:test")))
    content = presence_of("@alice:test")[-1]["content"]
    assert content["presence"] == "online" and content["status_msg"] == "alice here"
    # Someone who shares no room with the service's users stays private.
    assert presence_of("@stranger:test") == []


async def test_two_workers_send_each_transaction_once(
    tmp_path: Path, db_url: str, fake: FakeAppService, clock: FakeClock
) -> None:
    # Each in-process worker has its own bus: the one holding the lease may learn of the
    # other's events only by polling.
    config = _config(tmp_path, db_url, fake, appservice={"poll_interval_ms": 200})
    async with serve(config, clock) as (_, first), serve(config, clock) as (_, second):
        token, room_id = await _puppet_in_room(first)
        event_ids = []
        for i in range(6):
            client = first if i % 2 else second
            event_ids.append(await _send(client, token, room_id, f"w{i}"))
        await until(lambda: all(_delivered(fake, e) >= 1 for e in event_ids))
        await asyncio.sleep(0.5)  # a second copy would come now
        assert all(_delivered(fake, e) == 1 for e in event_ids)
        ids = [int(txn_id) for txn_id, _ in fake.transactions]
        assert ids == sorted(set(ids))


async def test_acting_as_a_moderated_user(bridge: tuple[Homeserver, httpx.AsyncClient]) -> None:
    """A service acting as a suspended, shadow-banned or locked user gets what the user's
    own token would (spec, "Account suspension" and "Account locking")."""
    from tests.api.admin_helpers import call, make_admin

    hs, client = bridge
    admin = await make_admin(hs, client)
    alice, token = await register(client, "alice")
    assert (await as_register(client, "bridge_puppet")).status_code == 200
    puppet = "@bridge_puppet:test"
    as_puppet = f"?user_id={puppet}"
    room = await create_room(client, token, preset="public_chat")
    v3 = "/_matrix/client/v3"
    r = await client.post(f"{v3}/join/{room}{as_puppet}", headers=AS, json={})
    assert r.status_code == 200, r.text

    async def send(text: str) -> httpx.Response:
        return await client.put(
            f"{v3}/rooms/{room}/send/m.room.message/{len(text)}{text[:3]}{as_puppet}",
            headers=AS,
            json={"msgtype": "m.text", "body": text},
        )

    async def seen_by_alice() -> list[str]:
        r = await client.get(
            f"{v3}/rooms/{room}/messages?dir=b&limit=50", headers=auth_header(token)
        )
        return [
            e["content"]["body"]
            for e in r.json()["chunk"]
            if e["sender"] == puppet and e["type"] == "m.room.message"
        ]

    # Suspended: may read, not send; lifted, it sends again.
    await call(client, admin, "PUT", f"/v1/suspend/{puppet}", {"suspend": True})
    r = await send("while suspended")
    assert r.status_code == 403 and r.json()["errcode"] == "M_USER_SUSPENDED"
    r = await client.get(f"{v3}/rooms/{room}/messages?dir=b&user_id={puppet}", headers=AS)
    assert r.status_code == 200
    r = await client.post(  # the service's own sender is not the suspended user
        f"{v3}/join/{room}", headers=AS, json={}
    )
    assert r.status_code == 200
    await call(client, admin, "PUT", f"/v1/suspend/{puppet}", {"suspend": False})
    assert (await send("after suspension")).status_code == 200

    # Shadow-banned: the send looks fine and reaches nobody.
    await call(client, admin, "POST", f"/v1/users/{puppet}/shadow_ban")
    r = await send("into the void")
    assert r.status_code == 200 and r.json()["event_id"].startswith("$")
    await call(client, admin, "DELETE", f"/v1/users/{puppet}/shadow_ban")
    assert (await send("heard again")).status_code == 200
    assert await seen_by_alice() == ["heard again", "after suspension"]

    # Locked: 401 M_USER_LOCKED, a soft logout; the sender itself is untouched.
    r = await client.put(
        f"/_matrix/client/v1/admin/lock/{puppet}",
        headers=auth_header(admin),
        json={"locked": True},
    )
    assert r.status_code == 200, r.text
    r = await whoami(client, as_puppet)
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_USER_LOCKED" and r.json()["soft_logout"] is True
    assert (await whoami(client)).status_code == 200
    r = await client.put(
        f"/_matrix/client/v1/admin/lock/{puppet}",
        headers=auth_header(admin),
        json={"locked": False},
    )
    assert r.status_code == 200
    r = await whoami(client, as_puppet)
    assert r.status_code == 200 and r.json()["user_id"] == puppet


async def test_network_room_directory(bridge: tuple[Homeserver, httpx.AsyncClient]) -> None:
    """PUT /directory/list/appservice/{networkId}/{roomId}: a service lists rooms in its
    network's directory, which /publicRooms shows by third_party_instance_id or with
    include_all_networks, and not in the server's own list."""
    hs, client = bridge
    alice, token = await register(client, "alice")
    v3 = "/_matrix/client/v3"
    bridged = await create_room(client, token, name="Bridged")
    ours = await create_room(client, token, name="Ours", preset="public_chat", visibility="public")

    async def listed(body: dict[str, Any]) -> list[str]:
        r = await client.post(f"{v3}/publicRooms", headers=auth_header(token), json=body)
        assert r.status_code == 200, r.text
        return sorted(e["room_id"] for e in r.json()["chunk"])

    path = f"{v3}/directory/list/appservice/irc-libera/{bridged}"
    r = await client.put(path, headers=AS, json={"visibility": "public"})
    assert r.status_code == 200 and r.json() == {}
    assert await listed({}) == [ours]
    assert await listed({"third_party_instance_id": "bridge|irc-libera"}) == [bridged]
    assert await listed({"third_party_instance_id": "bridge|irc-libera|0"}) == [bridged]
    assert await listed({"third_party_instance_id": "bridge|irc-oftc"}) == []
    assert await listed({"third_party_instance_id": "nourl|irc-libera"}) == []
    assert await listed({"include_all_networks": True}) == sorted([ours, bridged])
    # Another service's network of the same name is its own.
    r = await client.put(
        f"{v3}/directory/list/appservice/irc-libera/{ours}",
        headers=auth_header(NOURL_TOKEN),
        json={"visibility": "public"},
    )
    assert r.status_code == 200
    assert await listed({"third_party_instance_id": "nourl|irc-libera"}) == [ours]
    assert await listed({"third_party_instance_id": "bridge|irc-libera"}) == [bridged]
    # Withdrawn (twice: the second changes nothing).
    for _ in range(2):
        r = await client.put(path, headers=AS, json={"visibility": "private"})
        assert r.status_code == 200
    assert await listed({"third_party_instance_id": "bridge|irc-libera"}) == []
    assert await listed({"include_all_networks": True}) == [ours]

    # Refused: a user's token, an unknown room, bad bodies, a bad instance ID.
    for headers, url, body, status, errcode in (
        (auth_header(token), path, {"visibility": "public"}, 403, "M_FORBIDDEN"),
        ({}, path, {"visibility": "public"}, 401, "M_MISSING_TOKEN"),
        (
            AS,
            f"{v3}/directory/list/appservice/irc-libera/!nowhere:test",
            {"visibility": "public"},
            404,
            "M_NOT_FOUND",
        ),
        (
            AS,
            f"{v3}/directory/list/appservice/irc-libera/nowhere",
            {"visibility": "public"},
            400,
            None,
        ),
        (AS, path, {"visibility": "hidden"}, 400, None),
        (AS, path, {}, 400, None),
        (AS, path, {"visibility": 1}, 400, None),
    ):
        r = await client.put(url, headers=headers, json=body)
        assert r.status_code == status, (url, body, r.text)
        if errcode is not None:
            assert r.json()["errcode"] == errcode
        else:
            assert r.json()["errcode"].startswith("M_")
    r = await client.put(path, headers=AS, content=b"{")
    assert r.status_code == 400 and r.json()["errcode"] == "M_NOT_JSON"
    r = await client.post(
        f"{v3}/publicRooms",
        headers=auth_header(token),
        json={"third_party_instance_id": "no-separator"},
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
