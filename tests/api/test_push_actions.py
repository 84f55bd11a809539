"""Push actions: ignored users notify nobody who ignores them (counts, /notifications,
pushes), and old push actions are pruned in bounded batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from homeserver.core.clock import FakeClock
from homeserver.storage.push import PushStore
from tests.conftest import make_config
from tests.helpers import (
    auth_header,
    bind_email,
    checked,
    create_room,
    email_config,
    register,
    serve,
)
from tests.push_servers import FakeGateway, SmtpServer, until

CS = "/_matrix/client/v3"
PUSH = {
    "allow_http": True,
    "poll_interval_ms": 600_000,
    "only_when_offline": False,
}


async def _counts(client: httpx.AsyncClient, token: str, room_id: str) -> tuple[int, int]:
    r = await client.get(
        f"{CS}/sync", params={"set_presence": "offline"}, headers=auth_header(token)
    )
    counts = checked(r)["rooms"]["join"][room_id]["unread_notifications"]
    return counts["notification_count"], counts["highlight_count"]


async def _send(
    client: httpx.AsyncClient, token: str, room_id: str, txn: str, mention: str | None = None
) -> str:
    content: dict[str, Any] = {"msgtype": "m.text", "body": f"text {txn}"}
    if mention is not None:
        content["m.mentions"] = {"user_ids": [mention]}
    r = await client.put(
        f"{CS}/rooms/{room_id}/send/m.room.message/{txn}", json=content, headers=auth_header(token)
    )
    return str(checked(r)["event_id"])


async def _ignore(client: httpx.AsyncClient, token: str, user_id: str, ignored: list[str]) -> None:
    r = await client.put(
        f"{CS}/user/{user_id}/account_data/m.ignored_user_list",
        json={"ignored_users": {u: {} for u in ignored}},
        headers=auth_header(token),
    )
    checked(r)


async def _notified(client: httpx.AsyncClient, token: str) -> list[str]:
    r = await client.get(f"{CS}/notifications", headers=auth_header(token))
    return [n["event"]["event_id"] for n in checked(r)["notifications"]]


async def _room(client: httpx.AsyncClient, creator: str, *others: str) -> str:
    room_id = await create_room(client, creator, preset="public_chat")
    for token in others:
        r = await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(token))
        checked(r)
    return room_id


async def test_ignored_users_do_not_notify(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock()
    with SmtpServer() as smtp:
        config = make_config(
            tmp_path,
            db_url,
            push=PUSH,
            email=email_config(smtp, notif_delay_ms=60_000),
            outbound={"allow_addresses": ["127.0.0.1/32"]},
        )
        async with FakeGateway() as gateway, serve(config, clock) as (hs, client):
            alice, a = await register(client, "alice")
            _, b = await register(client, "bob")
            _, c = await register(client, "carol")
            room_id = await _room(client, a, b, c)
            await bind_email(client, smtp, a, alice, "alice@example.org")
            for pusher in (
                {
                    "kind": "http",
                    "app_id": "org.example.app",
                    "pushkey": "k",
                    "data": {"url": gateway.url},
                },
                {"kind": "email", "app_id": "m.email", "pushkey": "alice@example.org", "data": {}},
            ):
                r = await client.post(
                    f"{CS}/pushers/set",
                    headers=auth_header(a),
                    json={
                        **pusher,
                        "lang": "en",
                        "app_display_name": "App",
                        "device_display_name": "Phone",
                    },
                )
                checked(r)
            # Made before alice ignores carol: counted until then, not after; the mail that
            # was waiting to report it leaves it out.
            before = await _send(client, c, room_id, "before", mention=alice)
            assert await _counts(client, a, room_id) == (1, 1)
            await _ignore(client, a, alice, ["@carol:test"])
            assert await _counts(client, a, room_id) == (0, 0)
            assert await _notified(client, a) == []
            # Made after: no push action at all, mentions included.
            await _send(client, c, room_id, "ignored1", mention=alice)
            await _send(client, c, room_id, "ignored2")
            assert await _counts(client, b, room_id) == (3, 0)  # bob still hears carol
            from_bob = await _send(client, b, room_id, "from-bob")
            assert await _counts(client, a, room_id) == (1, 0)
            assert await _notified(client, a) == [from_bob]
            await hs.pusher_sender.run_once()
            await until(lambda: from_bob in _pushed(gateway))
            # (the push of ``before`` may have gone out before the ignore: it was due at once)
            assert set(_pushed(gateway)) <= {before, from_bob}
            smtp.messages.clear()
            clock.advance(60_000)
            await hs.pusher_sender.run_once()
            await until(lambda: len(smtp.messages) == 1)
            part = smtp.messages[0][1].get_body(("plain",))
            assert part is not None
            text = part.get_content()
            assert "text from-bob" in text and "text before" not in text
            assert "ignored" not in text
            # Un-ignoring brings back what was counted before.
            await _ignore(client, a, alice, [])
            assert await _counts(client, a, room_id) == (2, 1)
            assert await _notified(client, a) == [from_bob, before]


def _pushed(gateway: FakeGateway) -> list[str]:
    return [n["notification"]["event_id"] for n in gateway.received]


async def test_old_push_actions_are_pruned(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock()
    config = make_config(tmp_path, db_url, push={"action_retention_ms": 60_000})
    async with serve(config, clock) as (hs, client):
        _, a = await register(client, "alice")
        _, b = await register(client, "bob")
        _, c = await register(client, "carol")
        room_id = await _room(client, a, b, c)
        assert hs.has_background_job(hs.push_action_pruner.run)
        old = [await _send(client, b, room_id, f"old{i}") for i in range(3)]
        clock.advance(30_000)
        new = [await _send(client, b, room_id, f"new{i}") for i in range(2)]
        assert await _counts(client, a, room_id) == (5, 0)
        assert await hs.push_action_pruner.prune() == 0  # nothing is 60 s old yet
        clock.advance(40_000)
        # A bounded batch stops inside an event's rows (one per notified member, alice's
        # and carol's): 3 rows are the first event's two and one of the second's.
        store = PushStore(hs.db)
        cutoff = clock.now_ms() - 60_000
        assert await store.prune_push_actions(cutoff, 3) == 3
        notified = {len(await _notified(client, t)) for t in (a, c)}
        assert notified == {3, 4}
        # The job does the rest, batch after batch, and keeps what is young.
        assert await hs.push_action_pruner.prune() == 3
        assert await _counts(client, a, room_id) == (2, 0)
        assert await _counts(client, c, room_id) == (2, 0)
        assert await _notified(client, a) == new[::-1]
        assert await store.prune_push_actions(cutoff, 3) == 0
        clock.advance(30_000)
        assert await hs.push_action_pruner.prune() == 4
        assert await _counts(client, a, room_id) == (0, 0)
        assert old  # sent, counted, pruned
