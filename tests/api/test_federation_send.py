"""Inbound transactions, PUT /_matrix/federation/v1/send/{txnId}, on both databases: PDUs
through the receipt checks, per-PDU answers, idempotency, limits, and every EDU (typing,
receipts, presence, to-device) including forged and malformed ones."""

from __future__ import annotations

import json
from typing import Any

import httpx

from homeserver.app import Homeserver
from homeserver.events.auth import auth_types_for_event
from homeserver.events.format import add_content_hash, compute_event_id, hash_and_sign_event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.federation.keyring import parse_key_response
from homeserver.federation.transactions import TransactionService
from homeserver.storage.server_keys import ServerKeyStore
from tests.api.e2ee_helpers import Device, new_device, sync
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, checked
from tests.helpers import create_room as create

FED = "/_matrix/federation/v1"
V3 = "/_matrix/client/v3"
EVE = "@eve:remote.test"
NOW = 1_700_000_000_000

Fed = tuple[Homeserver, httpx.AsyncClient]


async def put_txn(
    client: httpx.AsyncClient, remote: FakeRemote, txn_id: str, body: Any
) -> httpx.Response:
    path = f"{FED}/send/{txn_id}"
    header = remote.authorization("test", "PUT", path, body)
    return await client.put(
        path, content=json.dumps(body).encode(), headers={"Authorization": header}
    )


async def trust(hs: Homeserver, other: FakeRemote) -> None:
    """The homeserver holds ``other``'s keys (as if fetched)."""
    now = hs.clock.now_ms()
    keys = parse_key_response(
        other.key_response(now + 3_600_000), other.server_name, other.server_name, now
    )
    await ServerKeyStore(hs.db).store_keys(keys)


def txn(pdus: list[Any] | None = None, edus: list[Any] | None = None) -> dict[str, Any]:
    return {
        "origin": "remote.test",
        "origin_server_ts": NOW,
        "pdus": pdus or [],
        "edus": edus or [],
    }


async def pdu_for(
    hs: Homeserver,
    room_id: str,
    event_type: str,
    content: dict[str, Any],
    state_key: str | None = None,
    sender: str = EVE,
    signer: FakeRemote | None = None,
    after: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """A PDU of ``sender`` on the room's current state and extremities, signed by
    ``signer`` (the sender's server) if given."""
    room = await hs.room_store.get_room(room_id)
    assert room is not None
    version = KNOWN_ROOM_VERSIONS[room.room_version]
    state = await hs.event_store.get_current_state_ids(room_id)
    wanted = auth_types_for_event(version, event_type, state_key, sender, content)
    heads = await hs.event_store.get_forward_extremities(room_id)
    prevs = [e.event_id for e in heads]
    depths = [e.depth for e in (await hs.event_store.get_events(prevs)).values()]
    if after is not None:  # a child of a PDU we do not have yet
        prevs, depths = [compute_event_id(after, version)], [after["depth"]]
    pdu: dict[str, Any] = {
        "room_id": room_id,
        "sender": sender,
        "type": event_type,
        "content": content,
        "origin_server_ts": NOW,
        "depth": max(depths, default=0) + 1,
        "prev_events": prevs,
        "auth_events": [state[k] for k in wanted if k in state],
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    if signer is not None:
        hash_and_sign_event(pdu, signer.server_name, signer.key, version)
    else:
        add_content_hash(pdu)
        pdu["signatures"] = {}
    return pdu, compute_event_id(pdu, version)


async def room_with_eve(fed: Fed, remote: FakeRemote) -> tuple[Device, str]:
    """Alice's public room, which Eve of remote.test joined by a transaction."""
    hs, client = fed
    alice = await new_device(client, "alice")
    room_id = await create(client, alice.token, preset="public_chat")
    join, join_id = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, EVE, signer=remote
    )
    r = await put_txn(client, remote, "join", txn([join]))
    assert r.status_code == 200, r.text
    assert r.json() == {"pdus": {join_id: {}}}
    member = await hs.room_store.get_membership(room_id, EVE)
    assert member is not None and member.membership == "join"
    return alice, room_id


async def test_pdus_are_answered_one_by_one(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    message, message_id = await pdu_for(
        hs, room_id, "m.room.message", {"body": "hi"}, signer=remote
    )
    state = await hs.event_store.get_current_state_ids(room_id)
    pl = await hs.event_store.get_event(state[("m.room.power_levels", "")])
    assert pl is not None
    forged_content = {**pl.content, "users": {**pl.content.get("users", {}), EVE: 100}}
    forged, forged_id = await pdu_for(
        hs, room_id, "m.room.power_levels", forged_content, "", signer=remote
    )
    stranger, stranger_id = await pdu_for(
        hs, room_id, "m.room.message", {"body": "x"}, signer=remote
    )
    stranger["room_id"] = "!unknown:remote.test"
    stranger_id = compute_event_id(stranger, KNOWN_ROOM_VERSIONS["11"])
    r = await put_txn(client, remote, "t1", txn([message, forged, stranger, "not a pdu"]))
    assert r.status_code == 200, r.text
    answers = r.json()["pdus"]
    assert answers[message_id] == {}
    assert "error" in answers[forged_id]
    assert answers[stranger_id] == {"error": "Unknown room"}
    # The good one is served; the forged one changed nothing.
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        params={"dir": "b", "limit": "5"},
        headers=alice.headers,
    )
    assert checked(r)["chunk"][0]["event_id"] == message_id
    after = await hs.event_store.get_current_state_ids(room_id)
    assert after[("m.room.power_levels", "")] == pl.event_id


async def test_a_retried_transaction_is_answered_without_processing(
    fed: Fed, remote: FakeRemote
) -> None:
    hs, client = fed
    _, room_id = await room_with_eve(fed, remote)
    first, first_id = await pdu_for(hs, room_id, "m.room.message", {"body": "one"}, signer=remote)
    r1 = await put_txn(client, remote, "same", txn([first]))
    assert r1.json() == {"pdus": {first_id: {}}}
    # The same ID with other contents: the first answer, and the new PDU is not processed.
    second, second_id = await pdu_for(hs, room_id, "m.room.message", {"body": "two"}, signer=remote)
    r2 = await put_txn(client, remote, "same", txn([second]))
    assert r2.status_code == 200
    assert r2.json() == r1.json()
    assert await hs.event_store.get_event(second_id) is None
    # Transaction IDs are per origin: another server's "same" is a new transaction.
    other = FakeRemote("other.test")
    await trust(hs, other)
    r3 = await put_txn(client, other, "same", txn([second]))
    assert r3.status_code == 200
    assert r3.json() == {"pdus": {second_id: {}}}


async def test_limits_and_bad_bodies(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    pdu = {"room_id": "!r:remote.test", "type": "m.room.message"}
    r = await put_txn(client, remote, "big", txn([pdu] * 51))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_TOO_LARGE")
    edu = {"edu_type": "m.typing", "content": {}}
    r = await put_txn(client, remote, "many", txn(edus=[edu] * 101))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_TOO_LARGE")
    r = await put_txn(client, remote, "nolist", {"pdus": {"a": 1}})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await put_txn(client, remote, "noedus", {"pdus": [], "edus": "x"})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await put_txn(client, remote, "nopdus", {"edus": []})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await put_txn(client, remote, "array", [1, 2])
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
    # Not JSON at all (signed as if it were).
    path = f"{FED}/send/garbage"
    header = remote.authorization("test", "PUT", path, None)
    r = await client.put(path, content=b"{nope", headers={"Authorization": header})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_NOT_JSON")
    # An out-of-range integer refuses only what holds it (here an EDU, ignored), not the
    # transaction: PDUs are checked by their room's version.
    path = f"{FED}/send/range"
    raw = b'{"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"n": 9007199254740992}}]}'
    header = remote.authorization("test", "PUT", path, json.loads(raw))
    r = await client.put(path, content=raw, headers={"Authorization": header})
    assert (r.status_code, r.json()) == (200, {"pdus": {}})
    # Past the transaction body limit, larger than a client's: 413 before any parsing.
    huge = b'{"pdus": [], "edus": [], "x": "' + b"a" * (11 * 1024 * 1024) + b'"}'
    r = await client.put(f"{FED}/send/huge", content=huge, headers={"Authorization": header})
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")
    # A body larger than a client's limit but within a transaction's is accepted.
    roomy = txn(edus=[{"edu_type": "org.example.big", "content": {"x": "a" * 60_000}}] * 30)
    r = await put_txn(client, remote, "roomy", roomy)
    assert r.status_code == 200, r.text
    # Unsigned: 401.
    r = await client.put(f"{FED}/send/unsigned", json=txn())
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")


async def test_typing_from_the_users_server_only(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    first = await sync(client, alice)
    since = first["next_batch"]

    def typing(user_id: str, on: bool = True) -> dict[str, Any]:
        return {
            "edu_type": "m.typing",
            "content": {"room_id": room_id, "user_id": user_id, "typing": on},
        }

    edus = [
        typing("@mallory:elsewhere.test"),  # another server's user: forged
        typing("@zed:remote.test"),  # not in the room
        {"edu_type": "m.typing", "content": "not an object"},
        "not an edu",
        {"edu_type": "m.unknown.type", "content": {}},
        typing(EVE),
    ]
    r = await put_txn(client, remote, "typing", txn(edus=edus))
    assert r.status_code == 200, r.text
    data = await sync(client, alice, since=since)
    ephemeral = data["rooms"]["join"][room_id]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": [EVE]}} in ephemeral
    r = await put_txn(client, remote, "typing-off", txn(edus=[typing(EVE, False)]))
    assert r.status_code == 200
    data = await sync(client, alice, since=data["next_batch"])
    ephemeral = data["rooms"]["join"][room_id]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": []}} in ephemeral


async def test_read_receipts_from_the_users_server_only(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    message, message_id = await pdu_for(
        hs, room_id, "m.room.message", {"body": "hi"}, signer=remote
    )
    assert (await put_txn(client, remote, "m", txn([message]))).status_code == 200
    since = (await sync(client, alice))["next_batch"]

    def receipt(user_id: str, event_id: str) -> dict[str, Any]:
        return {
            "edu_type": "m.receipt",
            "content": {
                room_id: {"m.read": {user_id: {"event_ids": [event_id], "data": {"ts": NOW}}}}
            },
        }

    edus = [
        receipt(alice.user_id, message_id),  # our own user, claimed by remote.test: forged
        receipt(EVE, "$unknown"),
        {"edu_type": "m.receipt", "content": {room_id: {"m.read": {EVE: {"event_ids": 3}}}}},
        receipt(EVE, message_id),
    ]
    r = await put_txn(client, remote, "receipts", txn(edus=edus))
    assert r.status_code == 200, r.text
    data = await sync(client, alice, since=since)
    ephemeral = data["rooms"]["join"][room_id]["ephemeral"]["events"]
    receipts = [e for e in ephemeral if e["type"] == "m.receipt"]
    assert receipts == [
        {"type": "m.receipt", "content": {message_id: {"m.read": {EVE: {"ts": NOW}}}}}
    ]


async def test_presence_of_remote_users(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    alice, _ = await room_with_eve(fed, remote)
    since = (await sync(client, alice))["next_batch"]
    push = [
        {"user_id": "@mallory:elsewhere.test", "presence": "online", "last_active_ago": 1},
        {"user_id": EVE, "presence": "sleeping"},
        {
            "user_id": EVE,
            "presence": "online",
            "last_active_ago": 5000,
            "currently_active": True,
            "status_msg": "here",
        },
    ]
    r = await put_txn(
        client,
        remote,
        "presence",
        txn(edus=[{"edu_type": "m.presence", "content": {"push": push}}]),
    )
    assert r.status_code == 200, r.text
    data = await sync(client, alice, since=since)
    events = data["presence"]["events"]
    assert [e["sender"] for e in events] == [EVE]
    content = events[0]["content"]
    assert content["presence"] == "online"
    assert content["status_msg"] == "here"
    assert content["last_active_ago"] >= 5000


async def test_to_device_messages_are_delivered_once(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    alice = await new_device(client, "alice")
    since = (await sync(client, alice))["next_batch"]

    def to_device(message_id: str, sender: str = EVE) -> dict[str, Any]:
        return {
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": sender,
                "type": "m.room_key_request",
                "message_id": message_id,
                "messages": {alice.user_id: {alice.device_id: {"n": message_id}}},
            },
        }

    edus = [to_device("m1"), to_device("m1"), to_device("m2", "@mallory:elsewhere.test")]
    assert (await put_txn(client, remote, "td1", txn(edus=edus))).status_code == 200
    assert (await put_txn(client, remote, "td2", txn(edus=[to_device("m1")]))).status_code == 200
    data = await sync(client, alice, since=since)
    assert data["to_device"]["events"] == [
        {"type": "m.room_key_request", "sender": EVE, "content": {"n": "m1"}}
    ]


async def test_remote_pdu_from_another_origin_is_accepted(fed: Fed, remote: FakeRemote) -> None:
    """spec: the origin of a transaction need not be the server of a PDU's sender (a server
    forwards the events of the room it has)."""
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    third = FakeRemote("third.test")
    await trust(hs, third)
    fred = "@fred:third.test"
    other_join, other_id = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, fred, fred, signer=third
    )
    r = await put_txn(client, remote, "forwarded", txn([other_join]))
    assert r.json() == {"pdus": {other_id: {}}}
    r = await client.get(f"{V3}/rooms/{room_id}/joined_members", headers=auth_header(alice.token))
    assert "@fred:third.test" in checked(r)["joined"]


async def test_unsigned_and_badly_signed_pdus_are_refused(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    _, room_id = await room_with_eve(fed, remote)
    unsigned, unsigned_id = await pdu_for(hs, room_id, "m.room.message", {"body": "u"})
    # Signed by remote.test for a sender of third.test: the sender's server did not sign.
    third = FakeRemote("third.test")
    await trust(hs, third)
    fred = "@fred:third.test"
    foreign, foreign_id = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, fred, fred, signer=remote
    )
    # Signed, then changed: the signature no longer matches.
    changed, _ = await pdu_for(hs, room_id, "m.room.message", {"body": "c"}, signer=remote)
    changed["origin_server_ts"] += 1
    changed_id = compute_event_id(changed, KNOWN_ROOM_VERSIONS["11"])
    r = await put_txn(client, remote, "unsigned", txn([unsigned, foreign, changed]))
    assert r.status_code == 200, r.text
    answers = r.json()["pdus"]
    for event_id in (unsigned_id, foreign_id, changed_id):
        assert "error" in answers[event_id], answers
        assert await hs.event_store.get_event(event_id) is None


async def test_a_server_denied_by_the_acl_is_refused(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.server_acl/",
        json={"allow": ["*"], "deny": ["remote.test"], "allow_ip_literals": True},
        headers=alice.headers,
    )
    checked(r)
    since = (await sync(client, alice))["next_batch"]
    message, message_id = await pdu_for(hs, room_id, "m.room.message", {"b": 1}, signer=remote)
    typing = {
        "edu_type": "m.typing",
        "content": {"room_id": room_id, "user_id": EVE, "typing": True},
    }
    r = await put_txn(client, remote, "denied", txn([message], [typing]))
    assert r.status_code == 200, r.text
    assert r.json()["pdus"][message_id]["error"].startswith("Server is banned")
    assert await hs.event_store.get_event(message_id) is None
    data = await sync(client, alice, since=since, timeout=0)
    room = data.get("rooms", {}).get("join", {}).get(room_id, {})
    assert not [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == "m.typing"]


class MissingEvents:
    """The origin answering POST /get_missing_events."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.asked: list[Any] = []

    async def request(self, destination: str, method: str, path: str, **kw: Any) -> Any:
        self.asked.append((destination, method, path, kw.get("content")))
        return {"events": self.events}


def transactions_asking(hs: Homeserver, origin: MissingEvents) -> TransactionService:
    """The homeserver's transaction service, asking ``origin`` for missing events."""
    return TransactionService(
        hs.federation_queue_store,
        hs.incoming_events,
        hs.inbound_edus,
        hs.room_store,
        hs.clock,
        hs.room_acls,
        origin,
    )


async def test_a_gap_before_a_pdu_is_fetched_from_the_origin(fed: Fed, remote: FakeRemote) -> None:
    hs, client = fed
    alice, room_id = await room_with_eve(fed, remote)
    m1, m1_id = await pdu_for(hs, room_id, "m.room.message", {"body": "1"}, signer=remote)
    m2, m2_id = await pdu_for(hs, room_id, "m.room.message", {"body": "2"}, signer=remote, after=m1)
    m3, m3_id = await pdu_for(hs, room_id, "m.room.message", {"body": "3"}, signer=remote, after=m2)
    origin = MissingEvents([m2, m1])  # any order: taken in parents first
    answer = await transactions_asking(hs, origin).on_send("remote.test", "gap", txn([m3]))
    assert answer == {"pdus": {m3_id: {}}}
    [(destination, method, path, body)] = origin.asked
    assert (destination, method) == ("remote.test", "POST")
    assert path.startswith("/_matrix/federation/v1/get_missing_events/")
    assert body["latest_events"] == [m3_id] and body["limit"] == 10
    for event_id in (m1_id, m2_id, m3_id):
        assert await hs.event_store.get_event(event_id) is not None
    # An origin that cannot close the gap: the PDU is answered an error, nothing stored.
    m5, m5_id = await pdu_for(
        hs, room_id, "m.room.message", {"body": "5"}, signer=remote, after={**m3, "depth": 99}
    )
    silent = MissingEvents([])
    answer = await transactions_asking(hs, silent).on_send("remote.test", "gap2", txn([m5]))
    assert "error" in answer["pdus"][m5_id]
    assert await hs.event_store.get_event(m5_id) is None
