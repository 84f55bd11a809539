"""The outbound federation sender on both databases, against a fake destination: a
Starlette app served by uvicorn over TLS on loopback (certificate for dest.test from a test
CA) that records the transactions it receives and can be told to fail.

Events and EDUs arrive; a failing destination is backed off and, once back, caught up
(the newest event of each room); a final 4xx drops the transaction; the queue survives a
restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.ids import UserID
from homeserver.federation.auth import parse_x_matrix
from homeserver.federation.discovery import ServerAddress
from homeserver.federation.outbox import MAX_DEVICE_UPDATES_PER_USER, FederationOutbox
from homeserver.federation.sender import BACKOFF_INITIAL_MS, BACKOFF_MAX_MS, backoff_ms
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from homeserver.rooms.incoming import Outcome
from homeserver.storage.schema import federation_outbound_edus
from tests.api.e2ee_helpers import Device, new_device, upload
from tests.api.test_cross_signing import CrossSigning, _device_signing
from tests.api.test_federation_send import pdu_for, trust
from tests.conftest import make_config
from tests.e2e.conftest import free_port
from tests.federation_helpers import FakeRemote
from tests.helpers import checked, serve
from tests.helpers import create_room as create
from tests.tls_helpers import make_certificate, serving_tls

DEST = "dest.test"
EVE = f"@eve:{DEST}"
# dest.test's signing key, which the homeserver holds (its PDUs are checked).
DEST_SERVER = FakeRemote(DEST)
V3 = "/_matrix/client/v3"


@dataclass
class Destination:
    """The fake server: what it received, and how it answers."""

    port: int
    ca: Path
    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200  # what /send answers
    refused: int = 0  # transactions answered with another status
    hang_for: str | None = None  # requests for this server name never get an answer
    hung: list[str] = field(default_factory=list)
    invite_extra: dict[str, Any] = field(default_factory=dict)  # added to invites it signs
    release: asyncio.Event = field(default_factory=asyncio.Event)  # set at teardown

    def pdus(self) -> list[dict[str, Any]]:
        return [p for t in self.received for p in t["body"]["pdus"]]

    def edus(self, edu_type: str) -> list[dict[str, Any]]:
        return [
            e["content"]
            for t in self.received
            for e in t["body"]["edus"]
            if e["edu_type"] == edu_type
        ]


@pytest.fixture
async def destination(tmp_path: Path) -> AsyncIterator[Destination]:
    cert = make_certificate(tmp_path / "tls", dns_names=(DEST,), ips=())
    dest = Destination(free_port(), cert.ca_path)

    async def send(request: Request) -> Response:
        header = parse_x_matrix(request.headers["authorization"])
        if header.destination is not None and header.destination == dest.hang_for:
            dest.hung.append(request.path_params["txn_id"])
            await dest.release.wait()
        if dest.status != 200:
            dest.refused += 1
            return JSONResponse({"errcode": "M_UNKNOWN", "error": "down"}, dest.status)
        body = json.loads(await request.body())
        dest.received.append(
            {"txn_id": request.path_params["txn_id"], "origin": header.origin, "body": body}
        )
        return JSONResponse({"pdus": {}})

    async def invite(request: Request) -> Response:
        body = json.loads(await request.body())
        return JSONResponse({"event": DEST_SERVER.sign({**body["event"], **dest.invite_extra})})

    app = Starlette(
        routes=[
            Route("/_matrix/federation/v1/send/{txn_id}", send, methods=["PUT"]),
            Route("/_matrix/federation/v2/invite/{room_id}/{event_id}", invite, methods=["PUT"]),
        ]
    )
    async with serving_tls(app, dest.port, cert):
        try:
            yield dest
        finally:
            dest.release.set()


class ToDestination:
    """Every server name resolves to the fake destination (only dest.test is asked)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(self, server_name: str) -> list[ServerAddress]:
        return [ServerAddress("127.0.0.1", self.port, DEST, DEST)]


def sending_server(tmp_path: Path, db_url: str, clock: FakeClock, dest: Destination) -> Any:
    config = make_config(
        tmp_path,
        db_url,
        federation={"tls_ca_bundle": str(dest.ca), "request_timeout_ms": 5_000},
        outbound={"allow_addresses": ["127.0.0.1/32"]},
    )
    return serve(
        config,
        clock,
        outbound=Outbound(AddressPolicy(("127.0.0.1/32",))),
        server_resolver=ToDestination(dest.port),  # type: ignore[arg-type]
    )


@pytest.fixture
async def sending(
    tmp_path: Path, db_url: str, clock: FakeClock, destination: Destination
) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient]]:
    async with sending_server(tmp_path, db_url, clock, destination) as (hs, client):
        yield hs, client


async def until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def shared_room(hs: Homeserver, client: httpx.AsyncClient) -> tuple[Device, str]:
    """Alice's room, which Eve of dest.test joined (her join received as if by federation:
    rooms are joined across servers by issue 18's make_join/send_join)."""
    alice = await new_device(client, "alice")
    room_id = await create(client, alice.token, preset="public_chat")
    await trust(hs, DEST_SERVER)
    join, _ = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, EVE, EVE, signer=DEST_SERVER
    )
    [received] = await hs.incoming_events.receive(room_id, [join], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED
    return alice, room_id


async def send_message(client: httpx.AsyncClient, alice: Device, room_id: str, n: int) -> str:
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/t{n}",
        json={"msgtype": "m.text", "body": f"m{n}"},
        headers=alice.headers,
    )
    return str(checked(r)["event_id"])


async def until_backed_off(hs: Homeserver) -> None:
    """Until dest.test's last transaction failed and it waits for its retry time."""
    async with asyncio.timeout(30):
        while True:
            state = await hs.federation_queue_store.get_destination(DEST)
            if state is not None and state.retry_interval_ms > 0:
                return
            await asyncio.sleep(0.02)


def bodies(dest: Destination) -> list[str]:
    return [p["content"]["body"] for p in dest.pdus() if p["type"] == "m.room.message"]


async def test_events_and_edus_reach_the_destination(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination
) -> None:
    hs, client = sending
    alice, room_id = await shared_room(hs, client)
    await send_message(client, alice, room_id, 1)
    await until(lambda: bodies(destination) == ["m1"])
    # Typing, a read receipt, presence, a to-device message, device keys (twice).
    r = await client.put(
        f"{V3}/rooms/{room_id}/typing/{alice.user_id}",
        json={"typing": True, "timeout": 10_000},
        headers=alice.headers,
    )
    checked(r)
    last = await send_message(client, alice, room_id, 2)
    r = await client.post(
        f"{V3}/rooms/{room_id}/receipt/m.read/{last}", json={}, headers=alice.headers
    )
    checked(r)
    r = await client.put(
        f"{V3}/presence/{alice.user_id}/status",
        json={"presence": "online", "status_msg": "hi"},
        headers=alice.headers,
    )
    checked(r)
    r = await client.put(
        f"{V3}/sendToDevice/m.test/td1",
        json={"messages": {EVE: {"EVEDEV": {"a": 1}}, alice.user_id: {"*": {"b": 2}}}},
        headers=alice.headers,
    )
    checked(r)
    keys = alice.device_keys()
    await upload(client, alice, {"device_keys": keys})
    await until(lambda: len(destination.edus("m.direct_to_device")) == 1)
    await until(lambda: len(destination.edus("m.device_list_update")) == 1)
    await until(lambda: bool(destination.edus("m.receipt")))
    await until(lambda: bool(destination.edus("m.presence")))

    assert {t["origin"] for t in destination.received} == {"test"}
    assert len({t["txn_id"] for t in destination.received}) == len(destination.received)
    for t in destination.received:
        assert len(t["body"]["pdus"]) <= 50 and len(t["body"]["edus"]) <= 100
        assert t["body"]["origin"] == "test"
    assert bodies(destination) == ["m1", "m2"]
    assert {"room_id": room_id, "user_id": alice.user_id, "typing": True} in destination.edus(
        "m.typing"
    )
    [receipt] = destination.edus("m.receipt")
    assert receipt[room_id]["m.read"][alice.user_id]["event_ids"] == [last]
    pushes = [p for e in destination.edus("m.presence") for p in e["push"]]
    assert pushes[-1]["user_id"] == alice.user_id
    assert pushes[-1]["presence"] == "online" and pushes[-1]["status_msg"] == "hi"
    # The periodic announcement of our users who are online keeps Alice online there.
    before = len(destination.edus("m.presence"))
    assert await hs.presence.ping_remote_servers() == 1
    await until(lambda: len(destination.edus("m.presence")) == before + 1)
    [again] = destination.edus("m.presence")[-1]["push"]
    assert again["user_id"] == alice.user_id and again["presence"] == "online"
    [to_device] = destination.edus("m.direct_to_device")
    assert to_device["sender"] == alice.user_id and to_device["type"] == "m.test"
    assert to_device["messages"] == {EVE: {"EVEDEV": {"a": 1}}}  # ours stay here
    assert to_device["message_id"]
    [first] = destination.edus("m.device_list_update")
    assert first["user_id"] == alice.user_id and first["device_id"] == alice.device_id
    assert first["keys"] == keys
    assert first["prev_id"] == []
    # Another change: its prev_id is the update sent before.
    new_keys = alice.device_keys()  # a new curve25519 key
    await upload(client, alice, {"device_keys": new_keys})
    await until(lambda: len(destination.edus("m.device_list_update")) == 2)
    second = destination.edus("m.device_list_update")[1]
    assert second["prev_id"] == [first["stream_id"]]
    assert second["stream_id"] > first["stream_id"]
    assert second["keys"] == new_keys
    # Cross-signing keys: an m.signing_key_update, never the user-signing key.
    cross = CrossSigning(alice.user_id)
    assert (await _device_signing(client, alice, cross.all_keys())).status_code == 200
    await until(lambda: bool(destination.edus("m.signing_key_update")))
    [signing] = destination.edus("m.signing_key_update")
    assert signing == {
        "user_id": alice.user_id,
        "master_key": cross.key("master"),
        "self_signing_key": cross.key("self_signing"),
    }
    # A deleted device: an update marked deleted, chained on the last one.
    await hs.e2e_keys.delete_for_devices(UserID(alice.user_id), [alice.device_id])
    await until(lambda: len(destination.edus("m.device_list_update")) == 3)
    third = destination.edus("m.device_list_update")[2]
    assert third["deleted"] is True and "keys" not in third
    assert third["prev_id"] == [second["stream_id"]]


async def test_a_failing_destination_backs_off_then_catches_up(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination, clock: FakeClock
) -> None:
    hs, client = sending
    alice, room_id = await shared_room(hs, client)
    other_room = await create(client, alice.token, preset="public_chat")
    join, _ = await pdu_for(
        hs, other_room, "m.room.member", {"membership": "join"}, EVE, EVE, signer=DEST_SERVER
    )
    await hs.incoming_events.receive(other_room, [join], clock.now_ms())
    destination.status = 500
    await send_message(client, alice, room_id, 1)
    store = hs.federation_queue_store
    await until_backed_off(hs)
    state = await store.get_destination(DEST)
    assert state is not None and state.catching_up
    assert 0.9 * BACKOFF_INITIAL_MS <= state.retry_interval_ms <= 1.1 * BACKOFF_INITIAL_MS
    assert state.retry_at_ts == clock.now_ms() + state.retry_interval_ms
    # Down: more events queue up, nothing is tried before the retry time.
    for n in (2, 3):
        await send_message(client, alice, room_id, n)
    await send_message(client, alice, other_room, 4)
    await send_message(client, alice, other_room, 5)
    async with asyncio.timeout(15):  # queued by the sender's next rounds
        while await store.count_pdus(DEST) < 5:
            await asyncio.sleep(0.02)
    destination.status = 200
    hs.federation_wake.set()
    await asyncio.sleep(0.3)
    assert destination.received == []
    assert await store.count_pdus(DEST) == 5
    # The retry time passes: the destination gets the newest event of each room only.
    clock.advance(state.retry_interval_ms + 1)
    hs.federation_wake.set()
    await until(lambda: len(destination.received) >= 1)
    assert sorted(bodies(destination)) == ["m3", "m5"]

    async def recovered() -> bool:
        # The answer is read after the destination recorded the transaction.
        state = await store.get_destination(DEST)
        return state is not None and state.retry_interval_ms == 0 and not state.catching_up

    async with asyncio.timeout(15):
        while not await recovered():
            await asyncio.sleep(0.02)
    assert await store.count_pdus(DEST) == 0
    # Back to normal: every event again.
    await send_message(client, alice, room_id, 6)
    await send_message(client, alice, room_id, 7)
    await until(lambda: "m7" in bodies(destination))
    assert bodies(destination)[-2:] == ["m6", "m7"]


async def test_the_back_off_doubles_up_to_a_day() -> None:
    interval = 0
    seen = []
    for _ in range(40):
        interval = backoff_ms(interval)
        seen.append(interval)
    assert 0.9 * BACKOFF_INITIAL_MS <= seen[0] <= 1.1 * BACKOFF_INITIAL_MS
    assert all(b >= a or b >= 0.9 * BACKOFF_MAX_MS for a, b in zip(seen, seen[1:], strict=False))
    assert max(seen) <= 1.1 * BACKOFF_MAX_MS
    assert seen[-1] >= 0.9 * BACKOFF_MAX_MS


async def test_a_refused_transaction_is_dropped(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination
) -> None:
    hs, client = sending
    alice, room_id = await shared_room(hs, client)
    destination.status = 400
    await send_message(client, alice, room_id, 1)
    store = hs.federation_queue_store

    async def drained() -> bool:
        # The transaction was tried and refused (the PDU may be queued a round later than
        # the send's answer), then dropped from the queue.
        return (
            destination.refused > 0
            and await store.count_pdus(DEST) == 0
            and (await store.get_destination(DEST)) is not None
        )

    async with asyncio.timeout(15):
        while not await drained():
            await asyncio.sleep(0.02)
    state = await store.get_destination(DEST)
    assert state is not None and state.retry_interval_ms == 0
    destination.status = 200
    await send_message(client, alice, room_id, 2)
    await until(lambda: bodies(destination) == ["m2"])


async def test_the_queue_survives_a_restart(
    tmp_path: Path, db_url: str, clock: FakeClock, destination: Destination
) -> None:
    destination.status = 503
    async with sending_server(tmp_path, db_url, clock, destination) as (hs, client):
        alice, room_id = await shared_room(hs, client)
        await send_message(client, alice, room_id, 1)
        r = await client.put(
            f"{V3}/sendToDevice/m.test/td1",
            json={"messages": {EVE: {"EVEDEV": {"a": 1}}}},
            headers=alice.headers,
        )
        checked(r)
        r = await client.put(
            f"{V3}/rooms/{room_id}/typing/{alice.user_id}",
            json={"typing": True, "timeout": 10_000},
            headers=alice.headers,
        )
        checked(r)
        store = hs.federation_queue_store

        async def backed_off() -> bool:
            state = await store.get_destination(DEST)
            return state is not None and state.retry_interval_ms > 0

        async with asyncio.timeout(15):
            while not await backed_off():
                await asyncio.sleep(0.02)
    assert destination.received == []
    destination.status = 200
    clock.advance(2 * 24 * 3600 * 1000)
    async with sending_server(tmp_path, db_url, clock, destination) as (hs, client):
        await until(
            lambda: bool(destination.received) and bool(destination.edus("m.direct_to_device"))
        )
        assert bodies(destination) == ["m1"]
        # Typing from two days ago is not news: left out.
        assert destination.edus("m.typing") == []
        assert destination.edus("m.direct_to_device")[0]["messages"] == {EVE: {"EVEDEV": {"a": 1}}}


async def test_a_dead_destination_does_not_hold_up_the_others(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination, clock: FakeClock
) -> None:
    hs, client = sending
    alice, room_id = await shared_room(hs, client)
    dan = "@dan:dead.test"
    dead = FakeRemote("dead.test")
    await trust(hs, dead)
    join, _ = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, dan, dan, signer=dead
    )
    [received] = await hs.incoming_events.receive(room_id, [join], clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED
    destination.hang_for = "dead.test"  # accepts the connection, never answers
    await send_message(client, alice, room_id, 1)
    await until(lambda: bool(destination.hung) and bodies(destination) == ["m1"])
    # dead.test's transaction is still waiting for its answer; dest.test gets the next ones.
    await send_message(client, alice, room_id, 2)
    await send_message(client, alice, room_id, 3)
    await until(lambda: bodies(destination) == ["m1", "m2", "m3"], timeout_s=3)
    assert len(destination.hung) == 1  # one transaction in flight per destination
    assert await hs.federation_queue_store.count_pdus("dead.test") == 3


async def test_a_room_that_gains_a_remote_member_sends_to_it_at_once(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination, clock: FakeClock
) -> None:
    """The sender keeps which servers each room has; a join or a leave changes it at once."""
    hs, client = sending
    alice = await new_device(client, "alice")
    room_id = await create(client, alice.token, preset="public_chat")
    await send_message(client, alice, room_id, 1)
    # The round lock: once this returns, m1 was read and the room known as ours only.
    await hs.federation_sender.run_once()
    assert await hs.federation_queue_store.count_pdus(DEST) == 0
    await trust(hs, DEST_SERVER)
    join, _ = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "join"}, EVE, EVE, signer=DEST_SERVER
    )
    [received] = await hs.incoming_events.receive(room_id, [join], clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED
    await send_message(client, alice, room_id, 2)
    await until(lambda: bodies(destination) == ["m2"])
    # Eve leaves: the room is ours only again, nothing more goes there.
    leave, _ = await pdu_for(
        hs, room_id, "m.room.member", {"membership": "leave"}, EVE, EVE, signer=DEST_SERVER
    )
    [received] = await hs.incoming_events.receive(room_id, [leave], clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED
    await send_message(client, alice, room_id, 3)
    await hs.federation_sender.run_once()
    assert await hs.federation_queue_store.count_pdus(DEST) == 0
    await asyncio.sleep(0.2)
    assert bodies(destination) == ["m2"]


async def test_a_burst_of_sends_reaches_the_destination_once_each_in_order(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination
) -> None:
    """Wake-ups that come together share a round: every event still goes out, once, in
    stream order, at most 50 to a transaction."""
    hs, client = sending
    alice, room_id = await shared_room(hs, client)
    other = await new_device(client, "bob")
    r = await client.post(f"{V3}/rooms/{room_id}/join", json={}, headers=other.headers)
    checked(r)
    quiet = await create(client, other.token)  # a room of ours only, busy meanwhile
    sent = await asyncio.gather(
        *(send_message(client, alice, room_id, n) for n in range(60)),
        *(send_message(client, other, quiet, 100 + n) for n in range(20)),
    )
    await until(lambda: len(bodies(destination)) >= 60)
    await asyncio.sleep(0.2)
    got = bodies(destination)
    assert sorted(got) == sorted(f"m{n}" for n in range(60))  # each once, none of the quiet room's
    ids = [sent[int(body[1:])] for body in got]
    loaded = await hs.event_store.get_events(ids)
    orderings = [loaded[i].stream_ordering for i in ids]
    assert orderings == sorted(orderings)
    assert all(len(t["body"]["pdus"]) <= 50 for t in destination.received)


async def test_nothing_is_sent_twice_across_a_restart(
    tmp_path: Path, db_url: str, clock: FakeClock, destination: Destination
) -> None:
    """The cursor: saved with what it queues (a room of ours only moves it in memory), so
    a restart neither sends an event again nor loses one."""
    async with sending_server(tmp_path, db_url, clock, destination) as (hs, client):
        alice, room_id = await shared_room(hs, client)
        await send_message(client, alice, room_id, 1)
        await until(lambda: bodies(destination) == ["m1"])
        quiet = await create(client, alice.token)
        for n in range(2, 5):
            await send_message(client, alice, quiet, n)
        await hs.federation_sender.run_once()
    async with sending_server(tmp_path, db_url, clock, destination) as (hs, client):
        await send_message(client, alice, room_id, 5)
        await until(lambda: "m5" in bodies(destination))
        await hs.federation_sender.run_once()
        await asyncio.sleep(0.2)
    assert bodies(destination) == ["m1", "m5"]
    assert len({t["txn_id"] for t in destination.received}) == len(destination.received)


async def test_events_read_together_go_by_the_membership_at_each(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination, clock: FakeClock
) -> None:
    """Events read in one round with a later membership event: a server whose user joined
    after an event does not get it; one whose user only changed their name after it does."""
    hs, client = sending
    alice = await new_device(client, "alice")
    room_id = await create(client, alice.token, preset="public_chat")
    await hs.federation_sender.run_once()
    await trust(hs, DEST_SERVER)
    sender = hs.federation_sender
    async with sender._round:  # the sender waits: the next round reads all of these
        await send_message(client, alice, room_id, 1)
        join, _ = await pdu_for(
            hs, room_id, "m.room.member", {"membership": "join"}, EVE, EVE, signer=DEST_SERVER
        )
        [received] = await hs.incoming_events.receive(room_id, [join], clock.now_ms())
        assert received.outcome is Outcome.ACCEPTED
        await send_message(client, alice, room_id, 2)
    await until(lambda: bodies(destination) == ["m2"])
    async with sender._round:
        await send_message(client, alice, room_id, 3)
        rename, _ = await pdu_for(
            hs,
            room_id,
            "m.room.member",
            {"membership": "join", "displayname": "Eve E."},
            EVE,
            EVE,
            signer=DEST_SERVER,
        )
        [received] = await hs.incoming_events.receive(room_id, [rename], clock.now_ms())
        assert received.outcome is Outcome.ACCEPTED
        await send_message(client, alice, room_id, 4)
    await until(lambda: bodies(destination) == ["m2", "m3", "m4"])


# --- EDUs for a dead destination stay bounded: 10 000 EDUs queued while dest.test is backed
# off leave a few hundred rows; once it answers it gets the latest typing, receipt and
# presence of each subject, every to-device message in order, and device list updates
# whose prev_id chain is whole (the newest per device) or, for a user whose updates were
# collapsed, holds one that makes it resync the user's list.

TYPERS = [f"@typer{n}:test" for n in range(10)]


async def queued_rows(hs: Homeserver) -> dict[str, int]:
    query = (
        sa.select(federation_outbound_edus.c.edu_type, sa.func.count())
        .where(federation_outbound_edus.c.destination == DEST)
        .group_by(federation_outbound_edus.c.edu_type)
    )
    async with hs.db.read() as conn:
        return {str(r[0]): int(r[1]) for r in (await conn.execute(query)).all()}


async def test_ten_thousand_edus_to_a_dead_destination_stay_bounded(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination, clock: FakeClock
) -> None:
    hs, client = sending
    outbox = hs.edu_outbox
    assert isinstance(outbox, FederationOutbox)
    alice, room_id = await shared_room(hs, client)
    bob = await new_device(client, "bob")
    checked(await client.post(f"{V3}/rooms/{room_id}/join", json={}, headers=bob.headers))
    # One update about Alice's device reaches dest.test before the outage.
    await outbox.device_list_changed(alice.user_id, 1, "A0", deleted=False)
    await until(lambda: bool(destination.edus("m.device_list_update")))
    [before] = destination.edus("m.device_list_update")
    assert before["prev_id"] == [] and before["stream_id"] == 1
    # The destination dies, and is backed off after its next transaction fails.
    destination.status = 500
    await send_message(client, alice, room_id, 1)
    store = hs.federation_queue_store
    await until_backed_off(hs)
    received_before = len(destination.received)

    # 10 000 EDUs while it is down (side by side, each group about distinct subjects).
    last_event = await send_message(client, alice, room_id, 2)
    queued = 0
    typing: dict[str, bool] = {}
    receipts: dict[str, int] = {}
    for n in range(1000):
        calls = []
        for typer in (TYPERS[2 * n % 10], TYPERS[(2 * n + 1) % 10]):
            typing[typer] = n % 3 != 0
            receipts[typer] = n
            calls.append(outbox.typing(room_id, typer, typing=typing[typer]))
            calls.append(outbox.read_receipt(room_id, typer, last_event, None, n))
        for user in (alice, bob):
            calls.append(
                outbox.presence(user.user_id, {"presence": "online", "status_msg": f"s{n}"})
            )
        await asyncio.gather(*calls)
        queued += len(calls)
    stream_id = 1
    for step in range(200):  # Alice: 50 devices changing over and over
        await asyncio.gather(
            *(
                outbox.device_list_changed(
                    alice.user_id, stream_id + d, f"A{step % 5}-{d}", deleted=False
                )
                for d in range(1, 11)
            )
        )
        stream_id += 10
        queued += 10
    for step in range(190):  # Bob: a new device each time (churn past the per-user bound)
        await asyncio.gather(
            *(
                outbox.device_list_changed(
                    bob.user_id, stream_id + d, f"B{step}-{d}", deleted=d % 2 == 1
                )
                for d in range(1, 11)
            )
        )
        stream_id += 10
        queued += 10
    for n in range(100):
        await outbox.to_device(alice.user_id, "m.test", f"msg{n}", {EVE: {"EVEDEV": {"n": n}}})
        queued += 1
    assert queued == 10_000
    rows = await queued_rows(hs)
    assert rows["m.typing"] == 10 and rows["m.receipt"] == 10 and rows["m.presence"] == 2
    assert rows["m.direct_to_device"] == 100  # never dropped
    # Alice: one per device; Bob: at most the bound and his newest (a few more when
    # collapses ran side by side).
    assert 50 < rows["m.device_list_update"] <= 50 + MAX_DEVICE_UPDATES_PER_USER + 10
    assert sum(rows.values()) <= 10 + 10 + 2 + 100 + 50 + MAX_DEVICE_UPDATES_PER_USER + 10
    assert len(destination.received) == received_before  # nothing tried while backed off

    # It comes back: the retry time passes.
    destination.status = 200
    state = await store.get_destination(DEST)
    assert state is not None
    clock.advance(state.retry_at_ts - clock.now_ms() + 1)
    hs.federation_wake.set()
    async with asyncio.timeout(60):
        while await queued_rows(hs):
            await asyncio.sleep(0.05)
    # A transaction may be sent again under a new ID (at least once: an answer lost to a
    # timeout under load): each body counts once.
    after = list(
        {json.dumps(t["body"]["edus"]): t for t in destination.received[received_before:]}.values()
    )

    def edus(edu_type: str) -> list[dict[str, Any]]:
        return [e["content"] for t in after for e in t["body"]["edus"] if e["edu_type"] == edu_type]

    assert all(len(t["body"]["edus"]) <= 100 for t in after)
    # The latest state of each subject only.
    sent_typing = edus("m.typing")
    assert len(sent_typing) == 10
    assert {t["user_id"]: t["typing"] for t in sent_typing} == typing
    sent_receipts = edus("m.receipt")
    assert len(sent_receipts) == 10
    assert {
        u: r["data"]["ts"] for e in sent_receipts for u, r in e[room_id]["m.read"].items()
    } == receipts
    presence = {p["user_id"]: p["status_msg"] for e in edus("m.presence") for p in e["push"]}
    assert presence == {alice.user_id: "s999", bob.user_id: "s999"}
    # Every to-device message, in order.
    assert [m["message_id"] for m in edus("m.direct_to_device")] == [f"msg{n}" for n in range(100)]
    # Device lists: Alice's newest update of each device, chained on the one sent before.
    updates = edus("m.device_list_update")
    alices = [u for u in updates if u["user_id"] == alice.user_id]
    assert sorted(u["stream_id"] for u in alices) == list(range(1952, 2002))
    assert len({u["device_id"] for u in alices}) == 50
    previous = before["stream_id"]
    for u in alices:
        assert u["prev_id"] == [previous]
        previous = u["stream_id"]
    # Bob's: collapsed into one that names itself as its prev_id (an update dest.test cannot
    # have applied: it fetches his whole list); the others chain on the one before. (Two
    # collapses at once on PostgreSQL may leave an update queued before the marker.)
    bobs = [u for u in updates if u["user_id"] == bob.user_id]
    markers = [u for u in bobs if u["prev_id"] == [u["stream_id"]]]
    assert markers
    assert bobs.index(markers[0]) <= 10
    for a, b in zip([None, *bobs], bobs, strict=False):
        if b not in markers:
            assert b["prev_id"] == ([a["stream_id"]] if a is not None else [])
    assert max(u["stream_id"] for u in bobs) == stream_id
    assert len(bobs) <= MAX_DEVICE_UPDATES_PER_USER + 10


async def test_an_invite_goes_by_invite_alone_and_its_rescinding_by_send(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination
) -> None:
    """A server whose user is only invited is not in the room: the invite reaches it through
    /invite and not again in a transaction (SyTest's fake servers fail on a PDU of a room they
    did not join); a kick that rescinds the invite does go to it, and nothing else does."""
    hs, client = sending
    alice = await new_device(client, "alice")
    room_id = await create(client, alice.token, preset="private_chat")
    await trust(hs, DEST_SERVER)
    r = await client.post(
        f"{V3}/rooms/{room_id}/invite", json={"user_id": EVE}, headers=alice.headers
    )
    checked(r)
    await send_message(client, alice, room_id, 1)
    r = await client.post(
        f"{V3}/rooms/{room_id}/kick", json={"user_id": EVE}, headers=alice.headers
    )
    checked(r)
    await until(lambda: len(destination.pdus()) >= 1)
    await hs.federation_sender.run_once()
    await asyncio.sleep(0.2)
    memberships = [
        (p["type"], p["content"].get("membership"), p["state_key"]) for p in destination.pdus()
    ]
    assert memberships == [("m.room.member", "leave", EVE)]


async def test_an_invite_answered_with_a_float_is_bad_json(
    sending: tuple[Homeserver, httpx.AsyncClient], destination: Destination
) -> None:
    """The invitee's server signs an invite it added a float to: not canonical JSON in the
    room's version, so 400 M_BAD_JSON (not the 502 of an answer that is another event),
    and the invite is revoked."""
    hs, client = sending
    alice = await new_device(client, "alice")
    room_id = await create(client, alice.token, preset="private_chat")
    await trust(hs, DEST_SERVER)
    destination.invite_extra = {"bad_val": 1.1}
    r = await client.post(
        f"{V3}/rooms/{room_id}/invite", json={"user_id": EVE}, headers=alice.headers
    )
    # documented=False: the schema check finds the third-party invite's operation on this
    # path (which lists no 400); the user invite's does.
    checked(r, 400, "M_BAD_JSON", documented=False)
    member = await hs.room_store.get_membership(room_id, EVE)
    assert member is not None and member.membership == "leave"
