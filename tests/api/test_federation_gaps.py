"""Gaps before a transaction's PDUs, closed through real federation requests to the origin
(``FederatedGraph``), on both databases. The origin is a Starlette app under uvicorn with
TLS on loopback (a certificate for remote.test from a test CA) that answers
/get_missing_events, /state_ids and /event from its copy of the room (``RemoteRoom``), or
lies, fails, answers nonsense or never answers, as a test tells it.

A gap of 30 events is closed: the last ten by /get_missing_events, the rest bridged with
the state at the far end. A lying or broken origin never breaks the transaction (a 200 with
an error for the PDU) nor changes the room's current state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.federation.discovery import ServerAddress
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from homeserver.rooms.incoming import MISSING_EVENTS_LIMIT, RemoteGraphError
from tests.api.test_federation_send import put_txn, trust, txn
from tests.api.test_incoming_pipeline import EVE, public_room_with_eve, timeline
from tests.conftest import make_config
from tests.e2e.conftest import free_port
from tests.federation_helpers import FakeRemote
from tests.helpers import serve
from tests.incoming_helpers import RemoteRoom
from tests.tls_helpers import make_certificate, serving_tls

ORIGIN = "remote.test"
GAP = 30
FED = "/_matrix/federation/v1"


@dataclass
class Origin:
    """The fake origin: its room (set by the test) and how it answers."""

    port: int
    ca: Path
    room: RemoteRoom | None = None
    # "honest", "500", "shapes" (answers of the wrong shape), "wrong" (other events than
    # asked for), "hang" (no answer until the test ends)
    mode: str = "honest"
    asked: list[str] = field(default_factory=list)
    # state_ids answers these IDs in place of the true ones (a lying origin)
    state_swaps: dict[str, str] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def named(self, what: str) -> list[str]:
        return [a for a in self.asked if a == what]


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    cert = make_certificate(tmp_path / "tls", dns_names=(ORIGIN,), ips=())
    fake = Origin(free_port(), cert.ca_path)

    async def misbehaving(what: str, request: Request) -> Response | None:
        fake.asked.append(what)
        assert request.headers["authorization"].startswith("X-Matrix ")
        if fake.mode == "hang":
            await fake.release.wait()
        if fake.mode in ("500", "hang"):
            return JSONResponse({"errcode": "M_UNKNOWN", "error": "down"}, 500)
        return None

    async def missing(request: Request) -> Response:
        failed = await misbehaving("get_missing_events", request)
        if failed is not None:
            return failed
        if fake.mode == "shapes":
            return JSONResponse({"events": {"not": "a list"}})
        assert fake.room is not None
        body = json.loads(await request.body())
        events = await fake.room.get_missing_events(
            request.path_params["room_id"],
            body["earliest_events"],
            body["latest_events"],
            body["limit"],
            body["min_depth"],
        )
        if fake.mode == "wrong":
            # Each event changed after it was signed: its signature no longer matches.
            events = [{**e, "origin_server_ts": e["origin_server_ts"] + 1} for e in events]
        return JSONResponse({"events": list(events)})

    async def state_ids(request: Request) -> Response:
        failed = await misbehaving("state_ids", request)
        if failed is not None:
            return failed
        if fake.mode == "shapes":
            return JSONResponse({"pdu_ids": [1, 2], "auth_chain_ids": "x"})
        assert fake.room is not None
        try:
            state = await fake.room.get_state_ids(
                request.path_params["room_id"], request.query_params["event_id"]
            )
        except RemoteGraphError:
            return JSONResponse({"errcode": "M_NOT_FOUND", "error": "unknown"}, 404)
        pdu_ids = [fake.state_swaps.get(i, i) for i in state.state_ids]
        return JSONResponse({"pdu_ids": pdu_ids, "auth_chain_ids": list(state.auth_chain_ids)})

    async def event(request: Request) -> Response:
        failed = await misbehaving("event", request)
        if failed is not None:
            return failed
        if fake.mode == "shapes":
            return JSONResponse({"pdus": "none"})
        assert fake.room is not None
        event_id = request.path_params["event_id"]
        if fake.mode == "wrong":
            # Always Eve's join (which the homeserver holds), whatever was asked for.
            event_id = next(iter(fake.room.pdus))
        [pdu] = await fake.room.get_events(fake.room.room_id, [event_id]) or [None]
        if pdu is None:
            return JSONResponse({"errcode": "M_NOT_FOUND", "error": "unknown"}, 404)
        return JSONResponse({"origin": ORIGIN, "origin_server_ts": 0, "pdus": [pdu]})

    async def send(request: Request) -> Response:
        return JSONResponse({"pdus": {}})  # our events, sent to the origin: not looked at

    app = Starlette(
        routes=[
            Route(f"{FED}/get_missing_events/{{room_id}}", missing, methods=["POST"]),
            Route(f"{FED}/state_ids/{{room_id}}", state_ids),
            Route(f"{FED}/event/{{event_id}}", event),
            Route(f"{FED}/send/{{txn_id}}", send, methods=["PUT"]),
        ]
    )
    async with serving_tls(app, fake.port, cert):
        try:
            yield fake
        finally:
            fake.release.set()


class ToOrigin:
    """Every server name resolves to the fake origin."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(self, server_name: str) -> list[ServerAddress]:
        return [ServerAddress("127.0.0.1", self.port, ORIGIN, ORIGIN)]


Fed = tuple[Homeserver, httpx.AsyncClient]


@pytest.fixture
async def fed_online(
    tmp_path: Path, db_url: str, clock: FakeClock, origin: Origin, remote: FakeRemote
) -> AsyncIterator[Fed]:
    config = make_config(
        tmp_path,
        db_url,
        federation={"tls_ca_bundle": str(origin.ca), "request_timeout_ms": 1_000},
        outbound={"allow_addresses": ["127.0.0.1/32"]},
    )
    async with serve(
        config,
        clock,
        outbound=Outbound(AddressPolicy(("127.0.0.1/32",))),
        server_resolver=ToOrigin(origin.port),  # type: ignore[arg-type]
    ) as (hs, client):
        await trust(hs, remote)
        yield hs, client


async def gap_of(room: RemoteRoom, n: int) -> tuple[str, list[tuple[dict[str, Any], str]]]:
    """Eve's new display name, then ``n`` messages on it: the rename's ID and the messages."""
    _, rename_id = await room.build(
        "m.room.member", {"membership": "join", "displayname": "Evie"}, EVE
    )
    return rename_id, await room.chain(n, prevs=[rename_id])


async def test_a_gap_of_30_events_is_closed_through_the_origin(
    fed_online: Fed, origin: Origin, remote: FakeRemote
) -> None:
    hs, client = fed_online
    room, tok = await public_room_with_eve(client, hs, remote)
    origin.room = room
    head = [e.event_id for e in await hs.event_store.get_forward_extremities(room.room_id)]
    hs.clock.advance(1000)
    rename_id, built = await gap_of(room, GAP)
    ids = [event_id for _, event_id in built]
    r = await put_txn(client, remote, "gap30", txn([built[-1][0]]))
    assert r.status_code == 200, r.text
    assert r.json() == {"pdus": {ids[-1]: {}}}
    # The last ten before it by /get_missing_events (once), the state at the far end by
    # /state_ids, the events of it we lacked by /event.
    assert origin.named("get_missing_events") == ["get_missing_events"]
    assert origin.named("state_ids") == ["state_ids"]
    assert len(origin.named("event")) >= 2  # the far end and the rename at least
    served = ids[-MISSING_EVENTS_LIMIT - 1 :]
    far_end = ids[-MISSING_EVENTS_LIMIT - 2]
    assert (await timeline(client, tok, room.room_id))[: len(served)] == served[::-1]
    assert await hs.event_store.get_backward_extremities(room.room_id) == [far_end]
    for outlier in (far_end, rename_id):
        stored = await hs.event_store.get_event(outlier)
        assert stored is not None and not stored.served
    at = await hs.event_store.state_ids_at(ids[-1])
    assert at is not None and at[0][("m.room.member", EVE)] == rename_id
    heads = {e.event_id for e in await hs.event_store.get_forward_extremities(room.room_id)}
    assert heads == {*head, ids[-1]}
    member = await hs.room_store.get_membership(room.room_id, EVE)
    assert member is not None and member.displayname == "Evie"
    # The next PDU on it needs nothing more of the origin.
    asked = len(origin.asked)
    more, more_id = await room.build("m.room.message", {"body": "more"}, prevs=[ids[-1]])
    r = await put_txn(client, remote, "after", txn([more]))
    assert r.json() == {"pdus": {more_id: {}}}
    assert len(origin.asked) == asked


@pytest.mark.parametrize("mode", ["500", "shapes", "wrong", "hang"])
async def test_a_lying_or_broken_origin_changes_nothing(
    fed_online: Fed, origin: Origin, remote: FakeRemote, mode: str
) -> None:
    hs, client = fed_online
    room, tok = await public_room_with_eve(client, hs, remote)
    origin.room = room
    state = await hs.event_store.get_current_state_ids(room.room_id)
    before = await timeline(client, tok, room.room_id)
    # Messages only: their auth events are known, the gap is all the origin must fill.
    built = await room.chain(GAP)
    origin.mode = mode
    last, last_id = built[-1]
    r = await put_txn(client, remote, f"lies-{mode}", txn([last]))
    assert r.status_code == 200, r.text
    assert list(r.json()["pdus"]) == [last_id]
    assert "error" in r.json()["pdus"][last_id]
    assert origin.named("get_missing_events") and origin.named("state_ids")
    assert await hs.event_store.get_current_state_ids(room.room_id) == state
    assert await timeline(client, tok, room.room_id) == before
    assert await hs.event_store.get_event(last_id) is None
    member = await hs.room_store.get_membership(room.room_id, EVE)
    assert member is not None and member.displayname is None
    # The transaction's other PDUs, and the next transaction, are taken as ever.
    hs.clock.advance(1)
    fine, fine_id = await room.build("m.room.message", {"body": "fine"})
    r = await put_txn(client, remote, f"fine-{mode}", txn([fine]))
    assert r.json() == {"pdus": {fine_id: {}}}
    assert (await timeline(client, tok, room.room_id))[0] == fine_id


async def test_a_forged_state_at_the_gap_does_not_take_the_room(
    fed_online: Fed, origin: Origin, remote: FakeRemote
) -> None:
    """The origin claims that the state at the far end of the gap holds a power levels event
    of Eve's giving her 100: it fails the auth rules, is stored rejected, and counts for
    nothing, neither at the gap nor in the room's current state."""
    hs, client = fed_online
    room, tok = await public_room_with_eve(client, hs, remote)
    origin.room = room
    state = await hs.event_store.get_current_state_ids(room.room_id)
    pl_id = state[("m.room.power_levels", "")]
    pl = await hs.event_store.get_event(pl_id)
    assert pl is not None
    forged_content = {**pl.content, "users": {**pl.content.get("users", {}), EVE: 100}}
    _, forged_id = await room.build("m.room.power_levels", forged_content, "")
    built = await room.chain(GAP)
    origin.state_swaps = {pl_id: forged_id}
    last, last_id = built[-1]
    r = await put_txn(client, remote, "forged", txn([last]))
    assert r.status_code == 200, r.text
    # Taken, on the state at the gap without the forged event.
    assert r.json() == {"pdus": {last_id: {}}}
    assert origin.named("state_ids") == ["state_ids"]
    assert await hs.event_store.get_rejection(forged_id) is not None
    current = await hs.event_store.get_current_state_ids(room.room_id)
    assert current[("m.room.power_levels", "")] == pl_id
    at = await hs.event_store.state_ids_at(last_id)
    assert at is not None and at[0].get(("m.room.power_levels", "")) != forged_id
    # Eve still cannot change the power levels.
    hs.clock.advance(1)
    again, again_id = await room.build("m.room.power_levels", forged_content, "")
    r = await put_txn(client, remote, "forged-again", txn([again]))
    assert "error" in r.json()["pdus"][again_id]
    assert (await hs.event_store.get_current_state_ids(room.room_id))[
        ("m.room.power_levels", "")
    ] == pl_id
