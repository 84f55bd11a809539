"""Pushers: the API and its validation, the sender's queue (retries, restarts, rejected
pushkeys, online users) against a local push gateway, and missed-message e-mails received by
a real SMTP server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from homeserver.core.clock import FakeClock
from homeserver.core.config import HomeserverConfig
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from tests.conftest import make_config
from tests.helpers import (
    FakeResolver,
    assert_errors,
    auth_header,
    bind_email,
    email_config,
    login,
    register,
    serve,
)
from tests.openapi_schema import assert_response_matches
from tests.push_servers import FakeGateway, SmtpServer, until, until_async

CS = "/_matrix/client/v3"
PUSH = {
    "allow_http": True,
    "poll_interval_ms": 600_000,
    "retry_initial_ms": 1000,
}


def _config(
    tmp_path: Path, db_url: str, push: dict[str, Any] | None = None, **extra: Any
) -> HomeserverConfig:
    extra.setdefault("outbound", {"allow_addresses": ["127.0.0.1/32"]})  # the local gateway
    return make_config(tmp_path, db_url, push={**PUSH, **(push or {})}, **extra)


def _http_pusher(url: str, pushkey: str = "key1", **data: Any) -> dict[str, Any]:
    return {
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "profile_tag": "tag",
        "data": {"url": url, **data},
    }


async def _set(client: httpx.AsyncClient, token: str, body: dict[str, Any]) -> None:
    r = await client.post(f"{CS}/pushers/set", json=body, headers=auth_header(token))
    assert r.status_code == 200, r.text


async def _pushers(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    r = await client.get(f"{CS}/pushers", headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert_response_matches("GET", "/_matrix/client/v3/pushers", 200, r.json())
    pushers: list[dict[str, Any]] = r.json()["pushers"]
    return pushers


async def _dm(client: httpx.AsyncClient, a: str, b: str, name: str | None = None) -> str:
    body: dict[str, Any] = {"preset": "private_chat", "is_direct": True}
    if name:
        body["name"] = name
    r = await client.post(f"{CS}/createRoom", json=body, headers=auth_header(a))
    room_id = str(r.json()["room_id"])
    r = await client.post(
        f"{CS}/rooms/{room_id}/invite", json={"user_id": "@bob:test"}, headers=auth_header(a)
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(b))
    assert r.status_code == 200, r.text
    return room_id


async def _send(
    client: httpx.AsyncClient, token: str, room_id: str, txn: str, body: str = "hello"
) -> str:
    r = await client.put(
        f"{CS}/rooms/{room_id}/send/m.room.message/{txn}",
        json={"msgtype": "m.text", "body": body},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def _no_pushers(client: httpx.AsyncClient, token: str) -> bool:
    return await _pushers(client, token) == []


def _events_pushed(gateway: FakeGateway) -> list[str]:
    return [n["notification"]["event_id"] for n in gateway.received]


async def test_set_list_update_delete(tmp_path: Path, db_url: str) -> None:
    async with serve(_config(tmp_path, db_url)) as (_, client):
        _, token = await register(client, "bob")
        url = "http://127.0.0.1:1/_matrix/push/v1/notify"
        await _set(client, token, _http_pusher(url, format="event_id_only", custom=1))
        assert await _pushers(client, token) == [
            {
                "pushkey": "key1",
                "kind": "http",
                "app_id": "org.example.app",
                "app_display_name": "Example",
                "device_display_name": "Phone",
                "lang": "en",
                "profile_tag": "tag",
                "data": {"url": url, "format": "event_id_only", "custom": 1},
            }
        ]
        await _set(client, token, {**_http_pusher(url), "device_display_name": "Tablet"})
        [pusher] = await _pushers(client, token)
        assert pusher["device_display_name"] == "Tablet"
        await _set(client, token, _http_pusher(url, pushkey="key2"))
        assert len(await _pushers(client, token)) == 2
        await _set(client, token, {"kind": None, "app_id": "org.example.app", "pushkey": "key1"})
        assert [p["pushkey"] for p in await _pushers(client, token)] == ["key2"]
        await _set(
            client, token, {"kind": None, "app_id": "org.example.app", "pushkey": "unknown"}
        )  # deleting nothing is fine
        # Another user with the same pushkey replaces this one, unless appending.
        _, carol = await register(client, "carol")
        await _set(client, carol, {**_http_pusher(url, pushkey="key2"), "append": True})
        assert len(await _pushers(client, token)) == 1
        await _set(client, carol, _http_pusher(url, pushkey="key2"))
        assert await _pushers(client, token) == []
        assert len(await _pushers(client, carol)) == 1


async def test_bad_pushers(tmp_path: Path, db_url: str) -> None:
    config = _config(tmp_path, db_url, push={"allow_http": False}, outbound={})
    async with serve(config) as (_, client):
        _, token = await register(client, "bob")
        good = "https://push.example.org/_matrix/push/v1/notify"
        base = _http_pusher(good)
        await assert_errors(
            client,
            "POST",
            f"{CS}/pushers/set",
            [
                ({k: v for k, v in base.items() if k != "kind"}, 400, "M_MISSING_PARAM"),
                ({k: v for k, v in base.items() if k != "app_id"}, 400, "M_MISSING_PARAM"),
                ({k: v for k, v in base.items() if k != "pushkey"}, 400, "M_MISSING_PARAM"),
                ({k: v for k, v in base.items() if k != "lang"}, 400, "M_MISSING_PARAM"),
                ({k: v for k, v in base.items() if k != "data"}, 400, "M_MISSING_PARAM"),
                (
                    {k: v for k, v in base.items() if k != "app_display_name"},
                    400,
                    "M_MISSING_PARAM",
                ),
                ({**base, "kind": "carrier-pigeon"}, 400, "M_INVALID_PARAM"),
                ({**base, "kind": 1}, 400, "M_BAD_JSON"),
                ({**base, "append": "yes"}, 400, "M_BAD_JSON"),
                ({**base, "data": []}, 400, "M_BAD_JSON"),
                ({**base, "pushkey": "k" * 513}, 400, "M_INVALID_PARAM"),
                ({**base, "pushkey": ""}, 400, "M_INVALID_PARAM"),
                ({**base, "app_id": "a" * 65}, 400, "M_INVALID_PARAM"),
                ({**base, "data": {}}, 400, "M_INVALID_PARAM"),
                ({**base, "data": {"url": good, "format": "full"}}, 400, "M_INVALID_PARAM"),
                ({**base, "data": {"url": good, "x": "y" * 5000}}, 400, "M_INVALID_PARAM"),
                (_http_pusher("https://push.example.org/notify"), 400, "M_INVALID_PARAM"),
                (_http_pusher(good + "?x=1"), 400, "M_INVALID_PARAM"),
                (
                    _http_pusher("http://push.example.org/_matrix/push/v1/notify"),
                    400,
                    "M_INVALID_PARAM",
                ),  # not https
                (
                    _http_pusher("ftp://push.example.org/_matrix/push/v1/notify"),
                    400,
                    "M_INVALID_PARAM",
                ),
                (
                    _http_pusher("https://u:p@push.example.org/_matrix/push/v1/notify"),
                    400,
                    "M_INVALID_PARAM",
                ),
                (
                    _http_pusher("https://127.0.0.1/_matrix/push/v1/notify"),
                    400,
                    "M_INVALID_PARAM",
                ),  # loopback: SSRF
                (_http_pusher("https://10.1.2.3/_matrix/push/v1/notify"), 400, "M_INVALID_PARAM"),
                (_http_pusher("https://[::1]/_matrix/push/v1/notify"), 400, "M_INVALID_PARAM"),
                (
                    _http_pusher("https://169.254.169.254/_matrix/push/v1/notify"),
                    400,
                    "M_INVALID_PARAM",
                ),
                (
                    _http_pusher("https://localhost:99999/_matrix/push/v1/notify"),
                    400,
                    "M_INVALID_PARAM",
                ),
                (
                    {**base, "kind": "email", "app_id": "m.email", "pushkey": "bob@example.org"},
                    400,
                    "M_INVALID_PARAM",
                ),  # e-mail is not configured here
                (b"not json", 400, "M_NOT_JSON"),
            ],
            headers=auth_header(token),
        )
        r = await client.get(f"{CS}/pushers")
        assert r.status_code == 401


async def _setup(
    client: httpx.AsyncClient, gateway: FakeGateway, **data: Any
) -> tuple[str, str, str]:
    _, a = await register(client, "alice")
    _, b = await register(client, "bob")
    room_id = await _dm(client, a, b, name="Lunch")
    await _set(client, b, _http_pusher(gateway.url, **data))
    return a, b, room_id


async def test_push_format_and_event_id_only(tmp_path: Path, db_url: str) -> None:
    async with FakeGateway() as gateway, serve(_config(tmp_path, db_url)) as (hs, client):
        a, b, room_id = await _setup(client, gateway)
        event_id = await _send(client, a, room_id, "1", "lunch?")
        await hs.pusher_sender.run_once()
        await until(lambda: len(gateway.received) == 1)
        note = gateway.received[0]["notification"]
        assert note["event_id"] == event_id and note["room_id"] == room_id
        assert note["id"] == event_id  # its older name, for older gateways
        assert note["type"] == "m.room.message" and note["sender"] == "@alice:test"
        assert note["sender_display_name"] == "alice"
        assert note["room_name"] == "Lunch"
        assert note["content"] == {"msgtype": "m.text", "body": "lunch?"}
        assert note["counts"] == {"unread": 1}
        assert note["prio"] == "high"
        device = note["devices"][0]
        assert device["app_id"] == "org.example.app" and device["pushkey"] == "key1"
        assert device["data"] == {}  # everything but the url
        assert device["tweaks"] == {"sound": "default"}  # .m.rule.room_one_to_one
        assert isinstance(device["pushkey_ts"], int)
        # event_id_only: the event's fields stay home.
        await _set(client, b, _http_pusher(gateway.url, format="event_id_only"))
        second = await _send(client, a, room_id, "2", "secret")
        await hs.pusher_sender.run_once()
        await until(lambda: len(gateway.received) == 2)
        note = gateway.received[1]["notification"]
        assert set(note) == {"event_id", "room_id", "counts", "devices"}
        assert note["event_id"] == second and note["counts"] == {"unread": 2}
        assert note["devices"][0]["data"] == {"format": "event_id_only"}
        # One's own events are never pushed.
        await _send(client, b, room_id, "3", "mine")
        await hs.pusher_sender.run_once()
        assert len(gateway.received) == 2


async def test_retry_with_backoff_and_restart(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock()
    config = _config(tmp_path, db_url)
    async with FakeGateway() as gateway:
        gateway.status = 503
        async with serve(config, clock) as (hs, client):
            a, _, room_id = await _setup(client, gateway)
            first = await _send(client, a, room_id, "1")
            second = await _send(client, a, room_id, "2")
            await hs.pusher_sender.run_once()
            await until(lambda: len(gateway.received) == 1)
            await hs.pusher_sender.run_once()  # backing off: nothing is sent
            assert len(gateway.received) == 1
            clock.advance(1000)
            await hs.pusher_sender.run_once()
            await until(lambda: len(gateway.received) == 2)
            clock.advance(1000)  # the second back-off is 2 s
            await hs.pusher_sender.run_once()
            assert len(gateway.received) == 2
        # A restart in the middle: the queue is in the database.
        gateway.status = 200
        async with serve(config, clock) as (hs, client):
            clock.advance(1000)
            await hs.pusher_sender.run_once()
            await until(lambda: len(gateway.received) == 4)
            await hs.pusher_sender.run_once()
    delivered = _events_pushed(gateway)[2:]
    assert delivered == [first, second]  # in order, once each
    assert _events_pushed(gateway)[:2] == [first, first]


async def test_gateway_name_rebound_to_loopback_is_not_reached(tmp_path: Path, db_url: str) -> None:
    """The gateway's name resolves to a public address when the pusher is set, then to
    loopback: the sender's own connection is checked, refused, and retried later."""
    clock = FakeClock()
    dns = FakeResolver({"gw.test": [["93.184.215.14"], ["127.0.0.1"]]})
    config = _config(tmp_path, db_url, outbound={})
    async with FakeGateway() as gateway:
        async with serve(config, clock, Outbound(AddressPolicy(), dns)) as (hs, client):
            _, a = await register(client, "alice")
            _, b = await register(client, "bob")
            room_id = await _dm(client, a, b)
            url = f"http://gw.test:{gateway.server.port}/_matrix/push/v1/notify"
            await _set(client, b, _http_pusher(url))
            await _send(client, a, room_id, "1")
            await hs.pusher_sender.run_once()
            clock.advance(1000)
            await hs.pusher_sender.run_once()
            assert gateway.received == [] and len(dns.calls) == 3
            assert len(await _pushers(client, b)) == 1  # kept: refused now, maybe not later
        # Allowed, the same name reaches the gateway at the address it resolved to.
        dns = FakeResolver({"gw.test": [["127.0.0.1"]]})
        outbound = Outbound(AddressPolicy(["127.0.0.1/32"]), dns)
        async with serve(config, clock, outbound) as (hs, client):
            clock.advance(10_000)
            await hs.pusher_sender.run_once()
            await until(lambda: len(gateway.received) == 1)


async def test_rejected_pushkey_removes_the_pusher(tmp_path: Path, db_url: str) -> None:
    async with FakeGateway() as gateway, serve(_config(tmp_path, db_url)) as (hs, client):
        a, b, room_id = await _setup(client, gateway)
        gateway.rejected = ["key1"]
        await _send(client, a, room_id, "1")
        await hs.pusher_sender.run_once()
        await until(lambda: len(gateway.received) == 1)
        await until_async(lambda: _no_pushers(client, b))
        await _send(client, a, room_id, "2")
        await hs.pusher_sender.run_once()
        assert len(gateway.received) == 1


async def test_online_users_are_not_pushed(tmp_path: Path, db_url: str) -> None:
    async with FakeGateway() as gateway, serve(_config(tmp_path, db_url)) as (hs, client):
        a, b, room_id = await _setup(client, gateway)
        r = await client.get(f"{CS}/sync", headers=auth_header(b))  # online, syncing
        assert r.status_code == 200
        await _send(client, a, room_id, "1")
        await hs.pusher_sender.run_once()
        assert gateway.received == []
    config = _config(tmp_path, db_url, push={"only_when_offline": False})
    async with FakeGateway() as gateway, serve(config) as (hs, client):
        gateway_url = gateway.url
        _, a = await register(client, "alice2")
        _, b = await register(client, "bob2")
        r = await client.post(
            f"{CS}/createRoom", json={"invite": ["@bob2:test"]}, headers=auth_header(a)
        )
        room_id = r.json()["room_id"]
        await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(b))
        await _set(client, b, _http_pusher(gateway_url))
        r = await client.get(f"{CS}/sync", headers=auth_header(b))
        await _send(client, a, room_id, "1")
        await hs.pusher_sender.run_once()
        await until(lambda: len(gateway.received) == 1)


async def test_missed_message_mails(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock()
    with SmtpServer() as smtp:
        email = email_config(smtp, notif_delay_ms=60_000, client_url="https://client.test.org")
        async with serve(_config(tmp_path, db_url, email=email), clock) as (hs, client):
            _, a = await register(client, "alice")
            _, b = await register(client, "bob")
            room_id = await _dm(client, a, b, name="Plans <&>")
            mail_pusher = {
                "kind": "email",
                "app_id": "m.email",
                "pushkey": "bob@test.org",
                "app_display_name": "E",
                "device_display_name": "E",
                "lang": "en",
                "data": {},
            }
            await assert_errors(
                client,
                "POST",
                f"{CS}/pushers/set",
                [
                    ({**mail_pusher, "pushkey": "not-an-address"}, 400, "M_INVALID_PARAM"),
                    ({**mail_pusher, "app_id": "org.example"}, 400, "M_INVALID_PARAM"),
                    # As Synapse: only an address bound to the account (validated by mail).
                    (mail_pusher, 400, "M_THREEPID_NOT_FOUND"),
                ],
                headers=auth_header(b),
            )
            await bind_email(client, smtp, b, "@bob:test", "bob@test.org")
            smtp.messages.clear()
            await _set(
                client,
                b,
                {
                    "kind": "email",
                    "app_id": "m.email",
                    "pushkey": "bob@test.org",
                    "app_display_name": "E-mail",
                    "device_display_name": "bob@test.org",
                    "lang": "en",
                    "data": {},
                },
            )
            await _send(client, a, room_id, "1", "first <b>bold</b>")
            await _send(client, a, room_id, "2", "second")
            await hs.pusher_sender.run_once()
            assert smtp.messages == []  # not yet: the delay runs
            clock.advance(60_000)
            await hs.pusher_sender.run_once()
            await until(lambda: len(smtp.messages) == 1)
            envelope, mail = smtp.messages[0]
            assert envelope.rcpt_tos == ["bob@test.org"]
            assert mail["From"] == "Chat <chat@test.org>"
            assert mail["Subject"] == "[Chat] 2 unread in Plans <&>"
            text = mail.get_body(("plain",))
            html = mail.get_body(("html",))
            assert text is not None and html is not None
            plain, rich = text.get_content(), html.get_content()
            assert "alice: first <b>bold</b>" in plain and "alice: second" in plain
            assert "first &lt;b&gt;bold&lt;/b&gt;" in rich and "Plans &lt;&amp;&gt;" in rich
            assert f"https://client.test.org/#/room/{room_id}" in plain
            unsubscribe = mail["List-Unsubscribe"].strip("<>")
            assert unsubscribe in plain
            assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            # What was read before the delay ran out is not mailed.
            read = await _send(client, a, room_id, "3", "third")
            r = await client.post(
                f"{CS}/rooms/{room_id}/receipt/m.read/{read}", json={}, headers=auth_header(b)
            )
            assert r.status_code == 200
            clock.advance(60_000)
            await hs.pusher_sender.run_once()
            assert len(smtp.messages) == 1
            # The unsubscribe link: a page, then one POST removes the e-mail pusher.
            path = unsubscribe.split("/", 3)[3]
            r = await client.get(f"/{path}")
            assert r.status_code == 200 and "<form" in r.text
            r = await client.get("/_homeserver/client/unsubscribe?token=forged.x")
            assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
            r = await client.post(f"/{path}")
            assert r.status_code == 200
            assert await _pushers(client, b) == []


async def test_deleted_device_takes_its_pushers(tmp_path: Path, db_url: str) -> None:
    async with serve(_config(tmp_path, db_url)) as (_, client):
        _, token = await register(client, "bob")
        await _set(client, token, _http_pusher("http://127.0.0.1:1/_matrix/push/v1/notify"))
        r = await client.post(f"{CS}/logout", headers=auth_header(token))
        assert r.status_code == 200
        token = (await login(client, "bob"))["access_token"]
        assert await _pushers(client, token) == []


async def test_a_read_receipt_sends_the_new_badge(tmp_path: Path, db_url: str) -> None:
    """Reading moves the unread count: each HTTP pusher of the reader gets it alone (no
    event), once per change; a receipt that changes nothing sends nothing more."""
    async with FakeGateway() as gateway, serve(_config(tmp_path, db_url)) as (hs, client):
        a, b, room_id = await _setup(client, gateway)
        first = await _send(client, a, room_id, "1", "one")
        second = await _send(client, a, room_id, "2", "two")
        await hs.pusher_sender.run_once()
        await until(lambda: len(gateway.received) == 2)
        assert gateway.received[1]["notification"]["counts"] == {"unread": 2}
        for event_id, unread in ((first, 1), (second, 0)):
            r = await client.post(
                f"{CS}/rooms/{room_id}/receipt/m.read/{event_id}", json={}, headers=auth_header(b)
            )
            assert r.status_code == 200, r.text
            await until(
                lambda n=unread: gateway.received[-1]["notification"]["counts"] == {"unread": n}
            )
        badges = [n["notification"] for n in gateway.received[2:]]
        assert len(badges) == 2
        assert all(set(n) == {"counts", "devices"} for n in badges)
        assert badges[1]["devices"][0]["pushkey"] == "key1"
        # Alice's own receipt, and Bob's again on the same event: no badge changes.
        r = await client.post(
            f"{CS}/rooms/{room_id}/receipt/m.read/{second}", json={}, headers=auth_header(a)
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            f"{CS}/rooms/{room_id}/read_markers",
            json={"m.read.private": second},
            headers=auth_header(b),
        )
        assert r.status_code == 200, r.text
        # The in-memory bus starts the badge tasks before the request returns.
        await asyncio.gather(*hs.pusher_sender._badge_tasks)
        await hs.pusher_sender.run_once()
        assert len(gateway.received) == 4


async def test_an_invite_push_and_a_room_named_by_its_alias(tmp_path: Path, db_url: str) -> None:
    """An invite's push says so (``membership``, ``user_is_target``); a room without a name
    is named in pushes by its canonical alias."""
    async with FakeGateway() as gateway, serve(_config(tmp_path, db_url)) as (hs, client):
        _, a = await register(client, "alice")
        _, b = await register(client, "bob")
        await _set(client, b, _http_pusher(gateway.url))
        r = await client.post(
            f"{CS}/createRoom",
            json={"room_alias_name": "lunch", "invite": ["@bob:test"]},
            headers=auth_header(a),
        )
        assert r.status_code == 200, r.text
        room_id = r.json()["room_id"]
        await hs.pusher_sender.run_once()
        await until(lambda: len(gateway.received) == 1)
        note = gateway.received[0]["notification"]
        assert note["type"] == "m.room.member" and note["membership"] == "invite"
        assert note["user_is_target"] is True
        assert note["room_name"] == "#lunch:test" and note["room_alias"] == "#lunch:test"
        r = await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(b))
        assert r.status_code == 200, r.text
        await _send(client, a, room_id, "1")
        await hs.pusher_sender.run_once()
        await until(
            lambda: any(n["notification"].get("type") == "m.room.message" for n in gateway.received)
        )
        [message] = [
            n["notification"]
            for n in gateway.received
            if n["notification"].get("type") == "m.room.message"
        ]
        assert message["room_name"] == "#lunch:test" and "membership" not in message
