"""A hostile server and the room graph, on both databases: events whose prev_events lie in
another room, /get_missing_events answers that loop back, an auth-chain bomb, an origin
that answers slowly or never, and garbage answers to our /get_missing_events, /state_ids,
/event and key queries over real HTTPS. The work is bounded (events fetched, time spent),
the transaction is answered with per-PDU errors, nothing of the room changes, and other
rooms and other servers are served meanwhile."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import homeserver.rooms.incoming as incoming
from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.types import JsonDict
from homeserver.federation.client import FederationError
from homeserver.federation.transactions import TransactionService
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from homeserver.rooms.incoming import Outcome, RemoteGraphError
from tests.api.test_federation_gaps import ToOrigin
from tests.api.test_federation_send import put_txn, trust, txn
from tests.conftest import make_config
from tests.e2e.conftest import free_port
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, checked, register
from tests.helpers import create_room as create
from tests.incoming_helpers import RemoteRoom
from tests.tls_helpers import make_certificate, serving_tls

V3 = "/_matrix/client/v3"
EVE = "@eve:remote.test"
FRED = "@fred:third.test"
Fed = tuple[Homeserver, httpx.AsyncClient]


async def rooms_with_eve(
    hs: Homeserver, client: httpx.AsyncClient, remote: FakeRemote, n: int
) -> tuple[str, list[RemoteRoom]]:
    """Alice's token and ``n`` public rooms of hers that Eve of remote.test joined."""
    _, tok = await register(client, "alice")
    rooms = []
    for _ in range(n):
        room_id = await create(client, tok, preset="public_chat")
        room = RemoteRoom(hs, room_id, remote)
        join, _ = await room.build("m.room.member", {"membership": "join"}, EVE)
        [received] = await hs.incoming_events.receive(room_id, [join], hs.clock.now_ms())
        assert received.outcome is Outcome.ACCEPTED, received
        rooms.append(room)
    return tok, rooms


async def timeline(client: httpx.AsyncClient, tok: str, room_id: str) -> list[str]:
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        params={"dir": "b", "limit": "50"},
        headers=auth_header(tok),
    )
    return [e["event_id"] for e in checked(r)["chunk"]]


class Scripted:
    """The origin's side of /get_missing_events, /state_ids and /event, in process (the
    ``Requests`` a ``TransactionService`` asks), answering from its rooms unless told to
    hang or to answer something else."""

    def __init__(self, rooms: list[RemoteRoom]) -> None:
        self.rooms = {r.room_id: r for r in rooms}
        self.asked: list[str] = []
        self.hang: asyncio.Event | None = None
        self.missing: list[JsonDict] | None = None

    def named(self, what: str) -> int:
        return sum(1 for a in self.asked if a == what)

    async def request(
        self,
        destination: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        content: Any | None = None,
        max_bytes: int = 0,
        int_range: bool = True,
    ) -> Any:
        what, _, arg = path.removeprefix("/_matrix/federation/v1/").partition("/")
        arg = unquote(arg)
        self.asked.append(what)
        if self.hang is not None:
            await self.hang.wait()
            raise FederationError(destination, "gone")
        try:
            if what == "get_missing_events":
                room = self.rooms[arg]
                if self.missing is not None:
                    return {"events": self.missing}
                events = await room.get_missing_events(
                    arg,
                    content["earliest_events"],
                    content["latest_events"],
                    content["limit"],
                    content["min_depth"],
                )
                return {"events": list(events)}
            if what == "state_ids":
                assert query is not None
                state = await self.rooms[arg].get_state_ids(arg, query["event_id"])
                return {
                    "pdu_ids": list(state.state_ids),
                    "auth_chain_ids": list(state.auth_chain_ids),
                }
            if what == "event":
                for room in self.rooms.values():
                    if arg in room.pdus:
                        return {
                            "origin": "remote.test",
                            "origin_server_ts": 0,
                            "pdus": [room.pdus[arg]],
                        }
                raise FederationError(destination, "not found", status=404)
        except RemoteGraphError as e:
            raise FederationError(destination, str(e), status=404) from e
        raise FederationError(destination, f"unexpected {what}", status=404)


def transactions(hs: Homeserver, origin: Scripted, budget_s: float = 120.0) -> TransactionService:
    return TransactionService(
        hs.federation_queue_store,
        hs.incoming_events,
        hs.inbound_edus,
        hs.room_store,
        hs.clock,
        hs.room_acls,
        origin,
        budget_s,
        keys=hs.keyring,
    )


async def test_prev_events_in_another_room_are_refused(fed: Fed, remote: FakeRemote) -> None:
    """An event of room A whose parent is an event of room B (that the homeserver holds):
    B's state must not become A's, nor B's event one of A's extremities."""
    hs, client = fed
    tok, (a, b) = await rooms_with_eve(hs, client, remote, 2)
    r = await client.put(
        f"{V3}/rooms/{b.room_id}/state/m.room.name/",
        json={"name": "B only"},
        headers=auth_header(tok),
    )
    b_head = checked(r)["event_id"]
    state_a = await hs.event_store.get_current_state_ids(a.room_id)
    heads_a = [e.event_id for e in await hs.event_store.get_forward_extremities(a.room_id)]
    pdu, _ = await a.build("m.room.message", {"body": "from B"})
    pdu["prev_events"] = [b_head, *pdu["prev_events"]]
    event_id = await a.resign(pdu)
    honest, honest_id = await a.build("m.room.message", {"body": "fine"}, prevs=heads_a)
    service = transactions(hs, Scripted([a, b]))
    answer = await service.on_send("remote.test", "cross", txn([pdu, honest]))
    assert "error" in answer["pdus"][event_id], answer
    assert answer["pdus"][honest_id] == {}
    stored = await hs.event_store.get_event(event_id)
    assert stored is None or not stored.served
    after = await hs.event_store.get_current_state_ids(a.room_id)
    assert ("m.room.name", "") not in after
    assert after == state_a
    heads = {e.event_id for e in await hs.event_store.get_forward_extremities(a.room_id)}
    assert heads == {honest_id}
    assert b_head not in await timeline(client, tok, a.room_id)


async def test_missing_events_that_loop_back_are_bounded(fed: Fed, remote: FakeRemote) -> None:
    """The origin answers /get_missing_events with the very event asked about, a child of
    it posing as a parent, an event of another room and junk: one request, and the answer is
    taken for what it is (event IDs are hashes from room version 3: a true cycle cannot be
    built)."""
    hs, client = fed
    tok, (a, b) = await rooms_with_eve(hs, client, remote, 2)
    heads = [e.event_id for e in await hs.event_store.get_forward_extremities(a.room_id)]
    m1, m1_id = await a.build("m.room.message", {"body": "1"}, prevs=heads)
    m2, m2_id = await a.build("m.room.message", {"body": "2"}, prevs=[m1_id])
    child, child_id = await a.build("m.room.message", {"body": "child"}, prevs=[m2_id])
    other, other_id = await b.build("m.room.message", {"body": "b"})
    origin = Scripted([a, b])
    origin.missing = [dict(m2), dict(child), other, {"depth": "x"}, m1]
    service = transactions(hs, origin)
    answer = await service.on_send("remote.test", "loop", txn([m2]))
    assert answer == {"pdus": {m2_id: {}}}
    assert origin.named("get_missing_events") == 1
    for known in (m1_id, m2_id):
        stored = await hs.event_store.get_event(known)
        assert stored is not None and stored.served
    # The child was handed over as a parent: it is checked like any event, and not twice.
    assert (await timeline(client, tok, a.room_id)).count(m2_id) == 1
    assert await hs.event_store.get_event(other_id) is None or other_id not in await timeline(
        client, tok, a.room_id
    )
    current = await hs.event_store.get_current_state_ids(a.room_id)
    assert current[("m.room.member", EVE)] in {e for e in current.values()}  # the room is whole
    del child_id


async def test_an_auth_chain_bomb_is_bounded(
    fed: Fed, remote: FakeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event citing an unknown auth event whose every ancestor cites six more unknown
    ones (a tree of 259): the fetch stops at the pipeline's bound on events fetched, the
    event is refused, and the room goes on."""
    bound = 50
    monkeypatch.setattr(incoming, "MAX_FETCHED_EVENTS", bound)
    hs, client = fed
    tok, (a,) = await rooms_with_eve(hs, client, remote, 1)
    state = await hs.event_store.get_current_state_ids(a.room_id)
    create_id = state[("m.room.create", "")]
    template, _ = await a.build("m.room.member", {"membership": "join"}, EVE)

    async def node(level: int, i: int) -> str:
        children = [await node(level + 1, i * 6 + c) for c in range(6)] if level < 3 else []
        pdu = json.loads(json.dumps(template))
        pdu["content"] = {"membership": "join", "displayname": f"n{level}-{i}"}
        pdu["auth_events"] = [create_id, *children]
        return await a.resign(pdu)

    root = await node(0, 0)
    message, _ = await a.build("m.room.message", {"body": "boom"})
    message["auth_events"] = [*message["auth_events"][:8], root]
    message_id = await a.resign(message)
    origin = Scripted([a])
    service = transactions(hs, origin)
    answer = await service.on_send("remote.test", "bomb", txn([message]))
    assert "error" in answer["pdus"][message_id], answer
    assert origin.named("event") <= bound
    stored = await hs.event_store.get_event(message_id)
    assert stored is None or not stored.served
    assert await hs.event_store.get_current_state_ids(a.room_id) == state
    fine, fine_id = await a.build("m.room.message", {"body": "fine"})
    assert await service.on_send("remote.test", "after", txn([fine])) == {"pdus": {fine_id: {}}}
    assert (await timeline(client, tok, a.room_id))[0] == fine_id


async def test_a_silent_origin_holds_no_other_room_and_is_cut_off(
    fed: Fed, remote: FakeRemote
) -> None:
    """remote.test sends one transaction with a gap in each of five rooms (more than the
    rooms processed at once) and then never answers our questions: another server's events
    for a sixth room are taken meanwhile. A silent origin's transaction is answered (errors)
    once its time budget is spent."""
    hs, client = fed
    tok, rooms = await rooms_with_eve(hs, client, remote, 6)
    third = FakeRemote("third.test")
    await trust(hs, third)
    gapped = []
    for room in rooms[:5]:
        built = await room.chain(3)
        gapped.append(built[-1])
    origin = Scripted(rooms)
    origin.hang = asyncio.Event()
    service = transactions(hs, origin, budget_s=600.0)
    slow = asyncio.create_task(
        service.on_send("remote.test", "slow", txn([pdu for pdu, _ in gapped]))
    )
    for _ in range(300):
        await asyncio.sleep(0.01)
        if origin.named("get_missing_events") == 5:
            break
    assert origin.named("get_missing_events") == 5  # all five rooms wait on the origin
    fred_room = RemoteRoom(hs, rooms[5].room_id, third)
    join, join_id = await fred_room.build(
        "m.room.member", {"membership": "join"}, FRED, sender=FRED
    )
    answer = await asyncio.wait_for(service.on_send("third.test", "meanwhile", txn([join])), 10)
    assert answer == {"pdus": {join_id: {}}}
    assert not slow.done()
    origin.hang.set()  # the origin fails at last: every PDU of its transaction is an error
    answer = await asyncio.wait_for(slow, 30)
    assert set(answer["pdus"]) == {event_id for _, event_id in gapped}
    assert all("error" in a for a in answer["pdus"].values())
    for _, event_id in gapped:
        assert await hs.event_store.get_event(event_id) is None
    # A silent origin, cut off by the budget (one second here, two minutes by default).
    origin.hang = asyncio.Event()
    service = transactions(hs, origin, budget_s=1.0)
    built = await rooms[0].chain(3, prevs=[gapped[0][1]])
    pdu, event_id = built[-1]
    answer = await asyncio.wait_for(service.on_send("remote.test", "budget", txn([pdu])), 30)
    assert "error" in answer["pdus"][event_id]
    assert await hs.event_store.get_event(event_id) is None
    origin.hang.set()


# --- over real HTTPS -----------------------------------------------------------------------

ORIGIN = "remote.test"
FED = "/_matrix/federation/v1"


@dataclass
class Peer:
    """A fake server on loopback standing for every other server name: its room answers,
    its key server (``keys``), or the misbehaviour of ``modes[route]``: "hang", "html",
    "not-json", "huge", "deep", "wrong-shape"."""

    port: int
    ca: Path
    room: RemoteRoom | None = None
    keys: FakeRemote | None = None
    modes: dict[str, str] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def _bad(mode: str) -> Response:
    if mode == "html":
        return Response(b"<html><body>gateway</body></html>", 200, media_type="text/html")
    if mode == "not-json":
        return Response(b'{"events": [', 200, media_type="application/json")
    if mode == "huge":
        return Response(
            b'{"x": "' + b"a" * (20 * 1024 * 1024) + b'"}', 200, media_type="application/json"
        )
    if mode == "deep":
        return Response(b"[" * 5000 + b"]" * 5000, 200, media_type="application/json")
    return JSONResponse({"events": 5, "pdus": "x", "pdu_ids": {}, "verify_keys": []})


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    cert = make_certificate(tmp_path / "tls", dns_names=(ORIGIN,), ips=())
    fake = Peer(free_port(), cert.ca_path)

    async def misbehaving(what: str) -> Response | None:
        fake.asked.append(what)
        mode = fake.modes.get(what)
        if mode is None:
            return None
        if mode == "hang":
            await fake.release.wait()
            return JSONResponse({"errcode": "M_UNKNOWN", "error": "late"}, 500)
        return _bad(mode)

    async def missing(request: Request) -> Response:
        bad = await misbehaving("get_missing_events")
        if bad is not None:
            return bad
        assert fake.room is not None
        body = json.loads(await request.body())
        events = await fake.room.get_missing_events(
            request.path_params["room_id"],
            body["earliest_events"],
            body["latest_events"],
            body["limit"],
            body["min_depth"],
        )
        return JSONResponse({"events": list(events)})

    async def state_ids(request: Request) -> Response:
        bad = await misbehaving("state_ids")
        if bad is not None:
            return bad
        assert fake.room is not None
        state = await fake.room.get_state_ids(
            request.path_params["room_id"], request.query_params["event_id"]
        )
        return JSONResponse(
            {"pdu_ids": list(state.state_ids), "auth_chain_ids": list(state.auth_chain_ids)}
        )

    async def event(request: Request) -> Response:
        bad = await misbehaving("event")
        if bad is not None:
            return bad
        assert fake.room is not None
        found = await fake.room.get_events(fake.room.room_id, [request.path_params["event_id"]])
        if not found:
            return JSONResponse({"errcode": "M_NOT_FOUND", "error": "unknown"}, 404)
        return JSONResponse({"origin": ORIGIN, "origin_server_ts": 0, "pdus": list(found)})

    async def key(request: Request) -> Response:
        bad = await misbehaving("key")
        if bad is not None:
            return bad
        if fake.keys is None:
            return JSONResponse({"errcode": "M_NOT_FOUND", "error": "no"}, 404)
        return JSONResponse(fake.keys.key_response(10**13))

    app = Starlette(
        routes=[
            Route(f"{FED}/get_missing_events/{{room_id}}", missing, methods=["POST"]),
            Route(f"{FED}/state_ids/{{room_id}}", state_ids),
            Route(f"{FED}/event/{{event_id}}", event),
            Route("/_matrix/key/v2/server", key),
        ]
    )
    async with serving_tls(app, fake.port, cert):
        try:
            yield fake
        finally:
            fake.release.set()


@pytest.fixture
async def online(
    tmp_path: Path, db_url: str, clock: FakeClock, peer: Peer, remote: FakeRemote
) -> AsyncIterator[Fed]:
    config = make_config(
        tmp_path,
        db_url,
        federation={"tls_ca_bundle": str(peer.ca), "request_timeout_ms": 3_000},
        outbound={"allow_addresses": ["127.0.0.1/32"]},
    )
    from tests.helpers import serve

    async with serve(
        config,
        clock,
        outbound=Outbound(AddressPolicy(("127.0.0.1/32",))),
        server_resolver=ToOrigin(peer.port),  # type: ignore[arg-type]
    ) as (hs, client):
        await trust(hs, remote)
        yield hs, client


@pytest.mark.parametrize("route", ["get_missing_events", "state_ids", "event"])
@pytest.mark.parametrize("mode", ["html", "not-json", "huge", "deep", "wrong-shape", "hang"])
async def test_garbage_answers_to_our_questions(
    online: Fed, peer: Peer, remote: FakeRemote, route: str, mode: str
) -> None:
    hs, client = online
    tok, (room,) = await rooms_with_eve(hs, client, remote, 1)
    peer.room = room
    state = await hs.event_store.get_current_state_ids(room.room_id)
    before = await timeline(client, tok, room.room_id)
    # A name change then 30 messages: the gap needs all three routes (the name change is
    # state the homeserver lacks, fetched by /event).
    _, rename = await room.build("m.room.name", {"name": "renamed"}, "")
    built = await room.chain(30, prevs=[rename])
    last, last_id = built[-1]
    peer.modes[route] = mode
    r = await asyncio.wait_for(put_txn(client, remote, f"{route}-{mode}", txn([last])), 60)
    assert r.status_code == 200, r.text
    assert route in peer.asked
    answer = r.json()["pdus"][last_id]
    if route == "get_missing_events":
        # Without the events between, the gap is bridged with the state at its far end
        # (unless a loaded machine ran the other requests past their timeout: an error).
        if answer == {}:
            assert (await timeline(client, tok, room.room_id))[0] == last_id
        else:
            assert await timeline(client, tok, room.room_id) == before
    elif route == "event":
        # The events the origin will not give are left out (what cites them is refused);
        # whether the rest closes the gap depends on which were lost.
        assert answer == {} or "error" in answer
    else:
        assert "error" in answer
        assert await hs.event_store.get_event(last_id) is None
        assert await timeline(client, tok, room.room_id) == before
    current = await hs.event_store.get_current_state_ids(room.room_id)
    assert current.get(("m.room.name", "")) in (None, state.get(("m.room.name", "")), rename)
    # The origin mends its ways: its next event is taken.
    peer.modes.clear()
    hs.clock.advance(1)
    heads = [e.event_id for e in await hs.event_store.get_forward_extremities(room.room_id)]
    fine, fine_id = await room.build("m.room.message", {"body": "fine"}, prevs=heads)
    r = await put_txn(client, remote, f"fine-{route}-{mode}", txn([fine]))
    assert r.json() == {"pdus": {fine_id: {}}}


@pytest.mark.parametrize("version", ["5", "11"])
async def test_out_of_range_integers_in_fetched_events_by_room_version(
    online: Fed, peer: Peer, remote: FakeRemote, version: str
) -> None:
    """An event the origin gives through /get_missing_events holding an integer past the
    canonical range: taken in a room of version 1 to 5 (as Synapse does), refused alone
    from version 6; the rest of the answer is used either way."""
    hs, client = online
    _, tok = await register(client, "alice")
    room_id = await create(client, tok, preset="public_chat", room_version=version)
    room = RemoteRoom(hs, room_id, remote)
    join, _ = await room.build("m.room.member", {"membership": "join"}, EVE)
    [received] = await hs.incoming_events.receive(room_id, [join], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED, received
    peer.room = room
    first, first_id = await room.build("m.room.message", {"body": "first"})
    big, big_id = await room.build("m.room.message", {"body": "big", "n": 2**53}, prevs=[first_id])
    last, last_id = await room.build("m.room.message", {"body": "last"}, prevs=[big_id])
    r = await put_txn(client, remote, f"big-{version}", txn([last]))
    assert r.status_code == 200, r.text
    assert "get_missing_events" in peer.asked
    assert await hs.event_store.get_event(first_id) is not None
    stored = await hs.event_store.get_event(big_id)
    if version == "5":
        assert r.json()["pdus"][last_id] == {}
        assert stored is not None and stored.content["n"] == 2**53
        assert (await timeline(client, tok, room_id))[:3] == [last_id, big_id, first_id]
    else:
        assert stored is None or not stored.served
        assert big_id not in await timeline(client, tok, room_id)


@pytest.mark.parametrize("mode", ["html", "not-json", "huge", "deep", "wrong-shape", "hang"])
async def test_a_key_server_that_lies_or_hangs(
    online: Fed, peer: Peer, remote: FakeRemote, mode: str
) -> None:
    """Eve's transaction carries three events of Fred of third.test, whose key query answers
    garbage or nothing: they are refused (one key query, within the request timeout), Eve's
    own event in the same transaction is taken."""
    hs, client = online
    tok, (room,) = await rooms_with_eve(hs, client, remote, 1)
    third = FakeRemote("third.test")
    fred_room = RemoteRoom(hs, room.room_id, third)
    joins = []
    for n in range(3):
        pdu, event_id = await fred_room.build(
            "m.room.member", {"membership": "join", "displayname": f"f{n}"}, FRED, sender=FRED
        )
        joins.append((pdu, event_id))
    heads = [e.event_id for e in await hs.event_store.get_forward_extremities(room.room_id)]
    mine, mine_id = await room.build("m.room.message", {"body": "mine"}, prevs=heads)
    peer.keys = third
    peer.modes["key"] = mode
    r = await asyncio.wait_for(
        put_txn(client, remote, f"keys-{mode}", txn([pdu for pdu, _ in joins] + [mine])), 30
    )
    assert r.status_code == 200, r.text
    answers = r.json()["pdus"]
    assert answers[mine_id] == {}
    for _, event_id in joins:
        assert "error" in answers[event_id]
        assert await hs.event_store.get_event(event_id) is None
    assert peer.asked.count("key") == 1
    assert await hs.room_store.get_membership(room.room_id, FRED) is None
    # An honest answer, later: Fred's join is taken.
    peer.modes.clear()
    hs.clock.advance(60_000)
    heads = [e.event_id for e in await hs.event_store.get_forward_extremities(room.room_id)]
    join, join_id = await fred_room.build(
        "m.room.member", {"membership": "join"}, FRED, sender=FRED, prevs=heads
    )
    r = await put_txn(client, remote, f"keys-ok-{mode}", txn([join]))
    assert r.json() == {"pdus": {join_id: {}}}
