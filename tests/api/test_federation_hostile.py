"""A hostile server on the other end of PUT /send/{txnId}, on both databases: forged request
signatures, events signed by the wrong server or for another server's users, wrong content
hashes, oversize transactions and events, deep JSON and non-canonical numbers, replays,
forged EDUs and a flood of transactions. Each is answered with the spec's error (or a
per-PDU error in the 200 answer), never a 500; nothing of the room changes; an honest
server's events in the same room go on being taken."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from homeserver.app import Homeserver
from homeserver.events.format import compute_event_id
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.federation.transactions import MAX_WAITING_PER_ORIGIN
from homeserver.rooms.incoming import Received
from homeserver.storage.typing_notifications import TypingStore
from tests.api.e2ee_helpers import Device, new_device, sync
from tests.api.test_federation_send import EVE, FED, V3, pdu_for, put_txn, trust, txn
from tests.federation_helpers import FakeRemote
from tests.helpers import checked
from tests.helpers import create_room as create

Fed = tuple[Homeserver, httpx.AsyncClient]
THIRD = "third.test"
FRED = f"@fred:{THIRD}"


async def room_with_eve(
    fed: Fed, remote: FakeRemote, alice: Device | None = None, **body: Any
) -> tuple[Device, str]:
    """A public room of Alice's (registered unless given) that Eve of remote.test joined."""
    hs, client = fed
    if alice is None:
        alice = await new_device(client, "alice")
    room_id = await create(client, alice.token, preset="public_chat", **body)
    join, join_id = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, EVE, signer=remote
    )
    r = await put_txn(client, remote, f"join-{room_id}", txn([join]))
    assert r.json() == {"pdus": {join_id: {}}}, r.text
    return alice, room_id


async def typing_in(hs: Homeserver, room_id: str) -> list[str]:
    now = hs.clock.now_ms()
    found = await TypingStore(hs.db).get_typing([room_id], None, 2**62, now)
    return found.get(room_id, [])


async def timeline(client: httpx.AsyncClient, alice: Device, room_id: str) -> list[str]:
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        params={"dir": "b", "limit": "100"},
        headers=alice.headers,
    )
    return [e["event_id"] for e in checked(r)["chunk"]]


async def honest_message(fed: Fed, remote: FakeRemote, room_id: str, body: str) -> None:
    """remote.test's next message is taken and served: the room still works for it."""
    hs, client = fed
    pdu, event_id = await pdu_for(hs, room_id, "m.room.message", {"body": body}, signer=remote)
    r = await put_txn(client, remote, f"honest-{body}", txn([pdu]))
    assert r.json() == {"pdus": {event_id: {}}}, r.text
    stored = await hs.event_store.get_event(event_id)
    assert stored is not None and stored.served


async def test_a_forged_or_misaddressed_transaction_is_401_and_changes_nothing(
    fed: Fed, remote: FakeRemote
) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    before = await timeline(client, alice, room_id)
    pdu, event_id = await pdu_for(hs, room_id, "m.room.message", {"body": "x"}, signer=remote)
    body = txn([pdu])
    path = f"{FED}/send/forged"
    raw = json.dumps(body).encode()
    impostor = FakeRemote("remote.test")  # remote.test's name and key ID, another key
    other = FakeRemote("other.test")
    await trust(hs, other)
    headers = {
        "no header": None,
        "signed for another body": remote.authorization("test", "PUT", path, txn()),
        "signed without the body": remote.authorization("test", "PUT", path),
        "for another destination": remote.authorization("elsewhere.test", "PUT", path, body),
        "destination not signed": remote.authorization(
            "test", "PUT", path, body, signed_destination="elsewhere.test"
        ),
        "another path": remote.authorization("test", "PUT", f"{FED}/send/other", body),
        "impostor's key": impostor.authorization("test", "PUT", path, body),
        # other.test's valid signature, presented as remote.test's.
        "another server's signature": other.authorization("test", "PUT", path, body).replace(
            "other.test", "remote.test"
        ),
        "claims to be us": remote.authorization("test", "PUT", path, body).replace(
            "remote.test", "test"
        ),
    }
    for name, header in headers.items():
        sent = {"Authorization": header} if header is not None else {}
        r = await client.put(path, content=raw, headers=sent)
        assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED"), (name, r.text)
    assert await hs.event_store.get_event(event_id) is None
    assert await timeline(client, alice, room_id) == before
    # The transaction ID was not spent: the genuine one is processed.
    r = await put_txn(client, remote, "forged", body)
    assert r.json() == {"pdus": {event_id: {}}}


async def test_events_signed_by_the_wrong_server_or_for_another_servers_users(
    fed: Fed, remote: FakeRemote
) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    third = FakeRemote(THIRD)
    await trust(hs, third)
    state = await hs.event_store.get_current_state_ids(room_id)
    # remote.test signs a join of third.test's user, and a leave of our own Alice.
    fred_join, fred_id = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, FRED, FRED, signer=remote
    )
    alice_leave, alice_leave_id = await pdu_for(
        hs,
        room_id,
        "m.room.member",
        {"membership": "leave"},
        alice.user_id,
        alice.user_id,
        signer=remote,
    )
    # Our server's name as sender, signed by remote.test.
    as_us, as_us_id = await pdu_for(
        hs, room_id, "m.room.message", {"body": "it is I"}, sender=alice.user_id, signer=remote
    )
    # Signed by third.test, then its sender changed to Eve: Eve's server never signed it.
    relabelled, _ = await pdu_for(
        hs, room_id, "m.room.message", {"body": "r"}, sender=FRED, signer=third
    )
    relabelled["sender"] = EVE
    relabelled_id = compute_event_id(relabelled, KNOWN_ROOM_VERSIONS["12"])
    honest, honest_id = await pdu_for(hs, room_id, "m.room.message", {"body": "ok"}, signer=remote)
    forged = [fred_id, alice_leave_id, as_us_id, relabelled_id]
    r = await put_txn(
        client, remote, "wrong-signers", txn([fred_join, alice_leave, as_us, relabelled, honest])
    )
    assert r.status_code == 200, r.text
    answers = r.json()["pdus"]
    assert answers[honest_id] == {}
    for event_id in forged:
        assert "error" in answers[event_id], (event_id, answers)
        assert await hs.event_store.get_event(event_id) is None
    member = await hs.room_store.get_membership(room_id, alice.user_id)
    assert member is not None and member.membership == "join"
    assert await hs.room_store.get_membership(room_id, FRED) is None
    after = await hs.event_store.get_current_state_ids(room_id)
    assert after == state
    assert (await timeline(client, alice, room_id))[0] == honest_id


async def test_events_for_rooms_the_origin_is_not_in(fed: Fed, remote: FakeRemote) -> None:
    """A message of a remote.test user who never joined, a message into a room only our users
    are in, and one into a room we do not know: each refused, nothing stored."""
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    private = await create(client, alice.token, preset="private_chat")
    state = await hs.event_store.get_current_state_ids(room_id)
    zed, zed_id = await pdu_for(
        hs, room_id, "m.room.message", {"body": "z"}, sender="@zed:remote.test", signer=remote
    )
    inside, inside_id = await pdu_for(hs, private, "m.room.message", {"body": "i"}, signer=remote)
    nowhere, _ = await pdu_for(hs, room_id, "m.room.message", {"body": "n"}, signer=remote)
    nowhere["room_id"] = "!nowhere:remote.test"
    nowhere_id = compute_event_id(nowhere, KNOWN_ROOM_VERSIONS["11"])
    r = await put_txn(client, remote, "not-in", txn([zed, inside, nowhere]))
    assert r.status_code == 200, r.text
    answers = r.json()["pdus"]
    assert answers[nowhere_id] == {"error": "Unknown room"}
    for event_id in (zed_id, inside_id):
        assert "error" in answers[event_id], answers
        stored = await hs.event_store.get_event(event_id)
        assert stored is None or not stored.served
    assert await hs.event_store.get_current_state_ids(room_id) == state
    await honest_message(fed, remote, room_id, "after-not-in")


async def test_a_wrong_content_hash_is_served_redacted(fed: Fed, remote: FakeRemote) -> None:
    """spec, "Checks performed on receipt of a PDU": a content hash mismatch redacts the
    event; the signatures (over the redacted form) still hold, so it is not dropped."""
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    pdu, _ = await pdu_for(hs, room_id, "m.room.message", {"body": "signed"}, signer=remote)
    pdu["content"] = {"body": "swapped after hashing", "url": "mxc://evil/x"}
    # Signatures cover the redacted form (no content), so they still verify.
    event_id = compute_event_id(pdu, KNOWN_ROOM_VERSIONS["12"])
    r = await put_txn(client, remote, "hash", txn([pdu]))
    assert r.json() == {"pdus": {event_id: {}}}, r.text
    r = await client.get(f"{V3}/rooms/{room_id}/event/{event_id}", headers=alice.headers)
    assert checked(r)["content"] == {}
    await honest_message(fed, remote, room_id, "after-hash")


async def test_oversize_transactions_and_events(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    before = await timeline(client, alice, room_id)
    # 51 genuine PDUs: the whole transaction is refused, none of them processed.
    pdus: list[dict[str, Any]] = []
    ids = []
    for i in range(51):
        pdu, event_id = await pdu_for(
            hs,
            room_id,
            "m.room.message",
            {"n": i},
            signer=remote,
            after=pdus[-1] if pdus else None,
        )
        pdus.append(pdu)
        ids.append(event_id)
    r = await put_txn(client, remote, "51", txn(pdus))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_TOO_LARGE")
    assert not await hs.event_store.get_events(ids)
    # 101 EDUs: refused whole too, not one typing notice applied.
    typing = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": EVE}}
    typing["content"]["typing"] = True
    r = await put_txn(client, remote, "101", txn(edus=[typing] * 101))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_TOO_LARGE")
    assert await typing_in(hs, room_id) == []
    # Exactly 50 and 100 are fine.
    r = await put_txn(client, remote, "50", txn(pdus[:50], [typing] * 100))
    assert r.status_code == 200, r.text
    assert all(r.json()["pdus"][i] == {} for i in ids[:50])
    # An event past 65 536 bytes: an error for it, its neighbour taken.
    big, big_id = await pdu_for(
        hs, room_id, "m.room.message", {"body": "x" * 70_000}, signer=remote
    )
    small, small_id = await pdu_for(hs, room_id, "m.room.message", {"body": "s"}, signer=remote)
    r = await put_txn(client, remote, "big", txn([big, small]))
    assert r.status_code == 200, r.text
    assert "error" in r.json()["pdus"][big_id]
    assert r.json()["pdus"][small_id] == {}
    assert await hs.event_store.get_event(big_id) is None
    assert len(await timeline(client, alice, room_id)) == len(before) + 51


async def test_deep_json_and_numbers_by_room_version(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    alice, v12 = await room_with_eve(fed, remote)
    _, v5 = await room_with_eve(fed, remote, alice, room_version="5")
    # Nested past the limit of every JSON we take (100 levels): the body is refused.
    deep: Any = "bottom"
    for _ in range(150):
        deep = {"d": deep}
    pdu, deep_id = await pdu_for(hs, v12, "m.room.message", {"body": deep}, signer=remote)
    r = await put_txn(client, remote, "deep", txn([pdu]))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
    assert await hs.event_store.get_event(deep_id) is None
    # Integers out of the canonical range: refused per PDU in room version 6 and later (its
    # neighbours taken), taken in versions 1 to 5 where canonical JSON is not required (as
    # Synapse does); an EDU holding one is ignored.
    for n in (2**53, -(2**53), 2**63):
        bad12, bad12_id = await pdu_for(
            hs, v12, "m.room.message", {"body": "n", "n": n}, signer=remote
        )
        ok12, ok12_id = await pdu_for(hs, v12, "m.room.message", {"body": f"ok{n}"}, signer=remote)
        big5, big5_id = await pdu_for(
            hs, v5, "m.room.message", {"body": "n", "n": n}, signer=remote
        )
        typing = {
            "edu_type": "m.typing",
            "content": {"room_id": v12, "user_id": EVE, "typing": True, "n": n},
        }
        r = await put_txn(client, remote, f"int-{n}", txn([bad12, ok12, big5], [typing]))
        assert r.status_code == 200, r.text
        answers = r.json()["pdus"]
        assert "error" in answers[bad12_id]
        assert answers[ok12_id] == {}
        assert answers[big5_id] == {}
        assert await hs.event_store.get_event(bad12_id) is None
        assert await hs.event_store.get_event(ok12_id) is not None
        stored = await hs.event_store.get_event(big5_id)
        assert stored is not None and stored.content["n"] == n
        served = checked(
            await client.get(f"{V3}/rooms/{v5}/event/{big5_id}", headers=alice.headers)
        )
        assert served["content"]["n"] == n
        assert EVE not in await typing_in(hs, v12)
    # The same EDU with an integer in range is taken: the one above was refused for its n.
    typing["content"]["n"] = 1
    r = await put_txn(client, remote, "int-in-range", txn([], [typing]))
    assert r.status_code == 200, r.text
    assert EVE in await typing_in(hs, v12)
    # Past 64 bits the body is not even JSON to the parser.
    path = f"{FED}/send/huge-int"
    raw = b'{"pdus": [], "edus": [{"edu_type": "x", "content": {"n": 1' + b"0" * 30 + b"}}]}"
    header = remote.authorization("test", "PUT", path, None)
    r = await client.put(path, content=raw, headers={"Authorization": header})
    assert r.status_code in (400, 401) and r.json()["errcode"] in (
        "M_NOT_JSON",
        "M_BAD_JSON",
        "M_UNAUTHORIZED",
    )
    # Floats: not canonical JSON, refused per PDU from room version 6; taken before it.
    f12, f12_id = await pdu_for(hs, v12, "m.room.message", {"body": "f", "x": 1.5}, signer=remote)
    ok12, ok12_id = await pdu_for(hs, v12, "m.room.message", {"body": "ok"}, signer=remote)
    f5, f5_id = await pdu_for(hs, v5, "m.room.message", {"body": "f", "x": 1.5}, signer=remote)
    r = await put_txn(client, remote, "floats", txn([f12, ok12, f5]))
    assert r.status_code == 200, r.text
    answers = r.json()["pdus"]
    assert "error" in answers[f12_id]
    assert answers[ok12_id] == {}
    assert answers[f5_id] == {}
    assert await hs.event_store.get_event(f12_id) is None
    stored = await hs.event_store.get_event(f5_id)
    assert stored is not None and stored.content["x"] == 1.5
    await honest_message(fed, remote, v12, "after-numbers")


async def test_replayed_transactions_and_events(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    pdu, event_id = await pdu_for(hs, room_id, "m.room.message", {"body": "once"}, signer=remote)
    # The same transaction three times at once: processed once, the same answer to each.
    answers = await asyncio.gather(*(put_txn(client, remote, "replay", txn([pdu])) for _ in "abc"))
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert all(r.json() == {"pdus": {event_id: {}}} for r in answers)
    # Later, with other contents: still the first answer, nothing processed.
    other, other_id = await pdu_for(hs, room_id, "m.room.message", {"body": "2"}, signer=remote)
    r = await put_txn(client, remote, "replay", txn([other]))
    assert r.json() == {"pdus": {event_id: {}}}
    assert await hs.event_store.get_event(other_id) is None
    # The same event in new transactions: known, shown once.
    for n in range(3):
        r = await put_txn(client, remote, f"again-{n}", txn([pdu, pdu]))
        assert r.json() == {"pdus": {event_id: {}}}
    assert (await timeline(client, alice, room_id)).count(event_id) == 1


async def test_edus_forged_for_users_of_other_servers(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    third = FakeRemote(THIRD)
    await trust(hs, third)
    fred_join, _ = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, FRED, FRED, signer=third
    )
    assert (await put_txn(client, third, "fred", txn([fred_join]))).status_code == 200
    message, message_id = await pdu_for(hs, room_id, "m.room.message", {"b": 1}, signer=remote)
    assert (await put_txn(client, remote, "m", txn([message]))).status_code == 200
    r = await client.put(
        f"{V3}/presence/{alice.user_id}/status",
        json={"presence": "unavailable", "status_msg": "mine"},
        headers=alice.headers,
    )
    checked(r)
    since = (await sync(client, alice))["next_batch"]
    bob = await new_device(client, "bob")
    bob_since = (await sync(client, bob))["next_batch"]
    victims = [alice.user_id, FRED]
    edus: list[Any] = []
    for victim in victims:
        edus += [
            {
                "edu_type": "m.typing",
                "content": {"room_id": room_id, "user_id": victim, "typing": True},
            },
            {
                "edu_type": "m.receipt",
                "content": {
                    room_id: {"m.read": {victim: {"event_ids": [message_id], "data": {"ts": 1}}}}
                },
            },
            {
                "edu_type": "m.presence",
                "content": {"push": [{"user_id": victim, "presence": "online"}]},
            },
            {
                "edu_type": "m.device_list_update",
                "content": {
                    "user_id": victim,
                    "device_id": "EVIL",
                    "stream_id": 1,
                    "prev_id": [],
                    "deleted": False,
                    "keys": {"user_id": victim, "device_id": "EVIL"},
                },
            },
            {
                "edu_type": "m.signing_key_update",
                "content": {
                    "user_id": victim,
                    "master_key": {
                        "user_id": victim,
                        "usage": ["master"],
                        "keys": {"ed25519:evil": "evil"},
                    },
                },
            },
            {
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": victim,
                    "type": "m.room_key_request",
                    "message_id": f"forged-{victim}",
                    "messages": {bob.user_id: {bob.device_id: {"forged": True}}},
                },
            },
        ]
    # Garbage in every shape besides.
    edus += [None, 1, "edu", [], {"edu_type": 5}, {"edu_type": "m.typing"}]
    edus += [{"edu_type": t, "content": []} for t in ("m.typing", "m.receipt", "m.presence")]
    r = await put_txn(client, remote, "forged-edus", txn(edus=edus))
    assert r.status_code == 200, r.text
    assert await typing_in(hs, room_id) == []
    data = await sync(client, alice, since=since, timeout=0)
    room = data.get("rooms", {}).get("join", {}).get(room_id, {})
    assert [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] != "m.typing"] == []
    assert [e["sender"] for e in data.get("presence", {}).get("events", [])] == []
    r = await client.get(f"{V3}/presence/{alice.user_id}/status", headers=alice.headers)
    assert checked(r)["presence"] == "unavailable"
    r = await client.get(f"{V3}/presence/{FRED}/status", headers=alice.headers)
    assert r.status_code in (200, 404)
    if r.status_code == 200:
        assert r.json()["presence"] != "online"
    r = await client.post(
        f"{V3}/keys/query",
        json={"device_keys": {alice.user_id: [], FRED: []}},
        headers=alice.headers,
    )
    keys = checked(r)
    assert "EVIL" not in keys.get("device_keys", {}).get(alice.user_id, {})
    assert "EVIL" not in keys.get("device_keys", {}).get(FRED, {})
    for user in (alice.user_id, FRED):
        master = keys.get("master_keys", {}).get(user, {})
        assert "ed25519:evil" not in master.get("keys", {})
    data = await sync(client, bob, since=bob_since, timeout=0)
    assert data.get("to_device", {}).get("events", []) == []
    # Eve's own typing, in the same shape, is taken: the EDUs were not refused for the shape.
    typing = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": EVE}}
    typing["content"]["typing"] = True
    assert (await put_txn(client, remote, "eve-typing", txn(edus=[typing]))).status_code == 200
    assert await typing_in(hs, room_id) == [EVE]


class CountingPipeline:
    """The event pipeline, counting the transactions of each origin it processes at once."""

    def __init__(self, inner: Any, gate: asyncio.Event) -> None:
        self.inner = inner
        self.gate = gate
        self.now = 0
        self.most = 0
        self.rooms: list[str] = []

    async def receive(
        self, room_id: str, pdus: Any, received_ts: int, remote: Any = None
    ) -> list[Received]:
        self.now += 1
        self.most = max(self.most, self.now)
        self.rooms.append(room_id)
        try:
            await self.gate.wait()
            result: list[Received] = await self.inner.receive(room_id, pdus, received_ts, remote)
            return result
        finally:
            self.now -= 1


async def test_a_flood_of_transactions_is_one_at_a_time_then_429(
    fed: Fed, remote: FakeRemote
) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    gate = asyncio.Event()
    counting = CountingPipeline(hs.transactions._pipeline, gate)
    hs.transactions._pipeline = counting
    flood = []
    for n in range(12):
        pdu, _ = await pdu_for(hs, room_id, "m.room.message", {"n": n}, signer=remote)
        flood.append(asyncio.create_task(put_txn(client, remote, f"flood-{n}", txn([pdu]))))
    # Until the first is through, no more than one is processed and a few wait; the others
    # are refused at once.
    refused = []
    for _ in range(1000):
        await asyncio.sleep(0.01)
        refused = [t for t in flood if t.done()]
        if len(refused) == len(flood) - 1 - MAX_WAITING_PER_ORIGIN and counting.now == 1:
            break
    assert len(refused) == len(flood) - 1 - MAX_WAITING_PER_ORIGIN
    for task in refused:
        r = task.result()
        assert (r.status_code, r.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert r.json()["retry_after_ms"] > 0
    assert counting.most == 1
    # Another server is not held up by the flood (its own turn).
    third = FakeRemote(THIRD)
    await trust(hs, third)
    fred_join, fred_id = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, FRED, FRED, signer=third
    )
    other = asyncio.create_task(put_txn(client, third, "meanwhile", txn([fred_join])))
    for _ in range(1000):
        await asyncio.sleep(0.01)
        if counting.now == 2:
            break
    assert counting.now == 2  # remote.test's one and third.test's one
    gate.set()
    assert (await other).json() == {"pdus": {fred_id: {}}}
    done = [await t for t in flood if t not in refused]
    assert [r.status_code for r in done] == [200] * (1 + MAX_WAITING_PER_ORIGIN)
    assert counting.most == 2
    # Once the flood is over, remote.test is served as ever (and can resend what was refused).
    hs.transactions._pipeline = counting.inner
    await honest_message(fed, remote, room_id, "after-flood")
    assert hs.transactions._inside == {}
