"""History before a gap in a room, asked of the other servers in it when /messages reaches
the gap (federation ``GET /backfill`` through ``FederatedGraph``, checked by
``IncomingEvents.receive_backfilled``), on both databases. The other server is a Starlette
app under uvicorn with TLS on loopback that answers from its copy of the room
(``RemoteRoom``), or lies, fails or answers nonsense, as a test tells it.

Eve's server sends the last of 50 messages (after a rename) that we never had: the last ten
come by /get_missing_events, the state at the far end by /state_ids, and the far end is the
room's backward extremity. Paging back through /messages then fills the gap, in order, with
no duplicates, and /sync never shows the backfilled events as new. And after our join to
another server's room, the 50 events before the join come the same way."""

from __future__ import annotations

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
from homeserver.core.streams import RoomPosition
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from homeserver.rooms.incoming import MISSING_EVENTS_LIMIT, RemoteGraphError
from homeserver.storage.events import referenced_ids
from homeserver.storage.schema import BACKFILL_BASE
from tests.api.test_federation_gaps import ToOrigin, gap_of
from tests.api.test_federation_remote_join import ROOM, ResidentRoom, ScriptedResident, join
from tests.api.test_federation_send import put_txn, trust, txn
from tests.api.test_incoming_pipeline import public_room_with_eve
from tests.conftest import make_config
from tests.e2e.conftest import free_port
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, checked, register, serve
from tests.incoming_helpers import RemoteRoom
from tests.tls_helpers import make_certificate, serving_tls

ORIGIN = "remote.test"
HISTORY = 50
FED = "/_matrix/federation/v1"
V3 = "/_matrix/client/v3"


@dataclass
class Origin:
    port: int
    ca: Path
    room: RemoteRoom | None = None
    # "honest", "500", "shapes", "forged" (signatures that do not match), "junk" (PDUs that
    # are no PDUs), "elsewhere" (another room's ID in each event)
    backfill_mode: str = "honest"
    backfills: list[dict[str, Any]] = field(default_factory=list)


async def _backfill_answer(room: RemoteRoom, starts: list[str], limit: int) -> list[Any]:
    """The events at and before ``starts``, newest first, as a server walks its graph."""
    found: dict[str, dict[str, Any]] = {}
    queue = list(starts)
    while queue and len(found) < limit:
        event_id = queue.pop(0)
        if event_id in found:
            continue
        [pdu] = await room.get_events(room.room_id, [event_id]) or [None]
        if pdu is None:
            continue
        found[event_id] = pdu
        queue.extend(referenced_ids(pdu, "prev_events"))
    return sorted(found.values(), key=lambda p: -p["depth"])


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    cert = make_certificate(tmp_path / "tls", dns_names=(ORIGIN,), ips=())
    fake = Origin(free_port(), cert.ca_path)

    async def missing(request: Request) -> Response:
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
        assert fake.room is not None
        try:
            state = await fake.room.get_state_ids(
                request.path_params["room_id"], request.query_params["event_id"]
            )
        except RemoteGraphError:
            return JSONResponse({"errcode": "M_NOT_FOUND", "error": "unknown"}, 404)
        return JSONResponse(
            {"pdu_ids": list(state.state_ids), "auth_chain_ids": list(state.auth_chain_ids)}
        )

    async def event(request: Request) -> Response:
        assert fake.room is not None
        [pdu] = await fake.room.get_events(
            fake.room.room_id, [request.path_params["event_id"]]
        ) or [None]
        if pdu is None:
            return JSONResponse({"errcode": "M_NOT_FOUND", "error": "unknown"}, 404)
        return JSONResponse({"origin": ORIGIN, "origin_server_ts": 0, "pdus": [pdu]})

    async def backfill(request: Request) -> Response:
        assert fake.room is not None
        assert request.headers["authorization"].startswith("X-Matrix ")
        assert request.path_params["room_id"] == fake.room.room_id
        starts = request.query_params.getlist("v")
        limit = int(request.query_params["limit"])
        fake.backfills.append({"v": starts, "limit": limit})
        mode = fake.backfill_mode
        if mode == "500":
            return JSONResponse({"errcode": "M_UNKNOWN", "error": "down"}, 500)
        if mode == "shapes":
            return JSONResponse({"origin": ORIGIN, "pdus": {"not": "a list"}})
        pdus = await _backfill_answer(fake.room, starts, limit)
        if mode == "forged":
            pdus = [{**p, "origin_server_ts": p["origin_server_ts"] + 1} for p in pdus]
        elif mode == "junk":
            pdus = [1, "x", {}, {"depth": "deep"}, {"depth": 3, "type": "m.room.message"}]
        elif mode == "elsewhere":
            pdus = [{**p, "room_id": "!other:remote.test"} for p in pdus]
        return JSONResponse({"origin": ORIGIN, "origin_server_ts": 0, "pdus": pdus})

    async def send(request: Request) -> Response:
        return JSONResponse({"pdus": {}})

    app = Starlette(
        routes=[
            Route(f"{FED}/get_missing_events/{{room_id}}", missing, methods=["POST"]),
            Route(f"{FED}/state_ids/{{room_id}}", state_ids),
            Route(f"{FED}/event/{{event_id}}", event),
            Route(f"{FED}/backfill/{{room_id}}", backfill),
            Route(f"{FED}/send/{{txn_id}}", send, methods=["PUT"]),
        ]
    )
    async with serving_tls(app, fake.port, cert):
        yield fake


Fed = tuple[Homeserver, httpx.AsyncClient]


@pytest.fixture
async def fed_online(
    tmp_path: Path, db_url: str, clock: FakeClock, origin: Origin, remote: FakeRemote
) -> AsyncIterator[Fed]:
    config = make_config(
        tmp_path,
        db_url,
        federation={"tls_ca_bundle": str(origin.ca), "request_timeout_ms": 5_000},
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


async def with_a_gap(
    client: httpx.AsyncClient, hs: Homeserver, remote: FakeRemote, origin: Origin
) -> tuple[RemoteRoom, str, str, list[str]]:
    """Alice's room with Eve, and a gap: Eve's rename and 50 messages, of which we get the
    last 11. The room, Alice's token, the rename's ID and the messages' IDs."""
    room, tok = await public_room_with_eve(client, hs, remote)
    origin.room = room
    hs.clock.advance(1000)
    rename_id, built = await gap_of(room, HISTORY)
    ids = [event_id for _, event_id in built]
    r = await put_txn(client, remote, "gap", txn([built[-1][0]]))
    assert r.json() == {"pdus": {ids[-1]: {}}}, r.text
    far_end = ids[-MISSING_EVENTS_LIMIT - 2]
    assert await hs.event_store.get_backward_extremities(room.room_id) == [far_end]
    return room, tok, rename_id, ids


async def page_back(client: httpx.AsyncClient, tok: str, room_id: str, limit: int) -> list[str]:
    """Every event /messages gives, paging backwards from now to the room's start."""
    seen: list[str] = []
    token: str | None = None
    for _ in range(100):
        params = {"dir": "b", "limit": str(limit)}
        if token is not None:
            params["from"] = token
        r = await client.get(
            f"{V3}/rooms/{room_id}/messages", params=params, headers=auth_header(tok)
        )
        body = checked(r)
        seen.extend(e["event_id"] for e in body["chunk"])
        token = body.get("end")
        if token is None:
            return seen
    raise AssertionError("no end to the room's history")


async def sync(client: httpx.AsyncClient, tok: str, since: str | None = None) -> dict[str, Any]:
    params = {"timeout": "0"}
    if since is not None:
        params["since"] = since
    body: dict[str, Any] = checked(
        await client.get(f"{V3}/sync", params=params, headers=auth_header(tok))
    )
    return body


async def test_paging_back_fills_the_gap_in_order_and_sync_shows_none_of_it(
    fed_online: Fed, origin: Origin, remote: FakeRemote
) -> None:
    hs, client = fed_online
    room, tok, rename_id, ids = await with_a_gap(client, hs, remote, origin)
    since = (await sync(client, tok))["next_batch"]
    state = await hs.event_store.get_current_state_ids(room.room_id)
    heads = await hs.event_store.get_forward_extremities(room.room_id)
    head = await hs.room_store.get_room_head(room.room_id)
    assert head is not None

    seen = await page_back(client, tok, room.room_id, 7)

    assert len(seen) == len(set(seen)), "a duplicate"
    # The whole gap, newest first, then the rename, then what came before it.
    assert seen[: HISTORY + 1] == [*ids[::-1], rename_id]
    assert (
        seen[-1]
        == (await hs.event_store.get_current_state_ids(room.room_id))[("m.room.create", "")]
    )
    assert origin.backfills, "the origin was asked"
    assert origin.backfills[0]["v"] == [ids[-MISSING_EVENTS_LIMIT - 2]]
    assert await hs.event_store.get_backward_extremities(room.room_id) == []
    # Backfilled: served, below the events stream.
    for event_id in [*ids[: -MISSING_EVENTS_LIMIT - 1], rename_id]:
        stored = await hs.event_store.get_event(event_id)
        assert stored is not None and stored.served, event_id
        assert stored.stream_ordering <= BACKFILL_BASE
    # The room's present did not move.
    assert await hs.event_store.get_current_state_ids(room.room_id) == state
    assert await hs.event_store.get_forward_extremities(room.room_id) == heads
    after = await hs.room_store.get_room_head(room.room_id)
    assert after is not None and after.latest_event_id == head.latest_event_id
    # /sync from before the backfill: nothing new.
    body = await sync(client, tok, since)
    joined = body.get("rooms", {}).get("join", {})
    assert joined.get(room.room_id, {}).get("timeline", {}).get("events", []) == []
    # Paging again reads what we hold: the origin is not asked again, the same history.
    asked = len(origin.backfills)
    assert await page_back(client, tok, room.room_id, 20) == seen
    assert len(origin.backfills) == asked
    # Forwards from the start, the backfilled events come too, oldest first.
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/messages",
        params={"dir": "f", "limit": "1000"},
        headers=auth_header(tok),
    )
    assert [e["event_id"] for e in checked(r)["chunk"]] == seen[::-1]
    # Around a backfilled event, and paging on from its context's tokens.
    middle = ids[20]
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/context/{middle}",
        params={"limit": "4"},
        headers=auth_header(tok),
    )
    context = checked(r)
    assert context["event"]["event_id"] == middle
    assert [e["event_id"] for e in context["events_before"]] == ids[18:20][::-1]
    assert [e["event_id"] for e in context["events_after"]] == ids[21:23]
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/messages",
        params={"dir": "b", "limit": "3", "from": context["start"]},
        headers=auth_header(tok),
    )
    assert [e["event_id"] for e in checked(r)["chunk"]] == ids[15:18][::-1]


@pytest.mark.parametrize("mode", ["500", "shapes", "forged", "junk", "elsewhere"])
async def test_a_lying_or_broken_server_changes_nothing(
    fed_online: Fed, origin: Origin, remote: FakeRemote, mode: str
) -> None:
    hs, client = fed_online
    room, tok, _, ids = await with_a_gap(client, hs, remote, origin)
    origin.backfill_mode = mode
    state = await hs.event_store.get_current_state_ids(room.room_id)
    gaps = await hs.event_store.get_backward_extremities(room.room_id)

    seen = await page_back(client, tok, room.room_id, 7)

    assert origin.backfills, "the origin was asked"
    # What we held, as we held it: the last 11 messages and the room before the gap.
    assert seen[: MISSING_EVENTS_LIMIT + 1] == ids[::-1][: MISSING_EVENTS_LIMIT + 1]
    assert len(seen) == len(set(seen))
    assert not set(seen) & set(ids[: -MISSING_EVENTS_LIMIT - 1])
    assert await hs.event_store.get_backward_extremities(room.room_id) == gaps
    assert await hs.event_store.get_current_state_ids(room.room_id) == state
    for event_id in ids[: -MISSING_EVENTS_LIMIT - 1]:
        stored = await hs.event_store.get_event(event_id)
        assert stored is None or not stored.served, event_id


def test_a_backfilled_event_has_a_token_with_a_negative_position() -> None:
    position = RoomPosition(12, BACKFILL_BASE - 3)
    assert RoomPosition.parse(position.serialize()) == position
    assert RoomPosition.parse(f"t5_{BACKFILL_BASE}_40") == RoomPosition(5, BACKFILL_BASE, 40)
    for bad in ("t-5_3", "t5_--3", "t5_-", "t5_3_-4", f"t5_-{2**64}"):
        with pytest.raises(Exception, match="Invalid pagination token"):
            RoomPosition.parse(bad)


class ResidentHistory:
    """The resident server of a remote room as FederatedGraph's requests see it: /backfill
    and /event from its copy of the room (no HTTP: the HTTP path is tested above)."""

    def __init__(self, room: Any) -> None:
        self.room = room
        self.asked: list[str] = []

    async def request(self, destination: str, method: str, path: str, **kw: Any) -> Any:
        self.asked.append(path)
        events: dict[str, Any] = self.room.events
        if "/backfill/" in path:
            found: dict[str, Any] = {}
            queue = list(kw["query"]["v"])
            while queue and len(found) < int(kw["query"]["limit"]):
                event_id = queue.pop(0)
                if event_id in events and event_id not in found:
                    found[event_id] = events[event_id]
                    queue.extend(events[event_id]["prev_events"])
            return {"origin": destination, "origin_server_ts": 0, "pdus": list(found.values())}
        if "/event/" in path:
            event_id = path.rsplit("/", 1)[1].replace("%24", "$")
            return {"pdus": [events[event_id]]}
        raise AssertionError(path)


async def test_history_before_our_join_to_a_remote_room_is_backfilled(
    fed: Fed, remote: FakeRemote
) -> None:
    hs, client = fed
    resident = ResidentRoom(remote)
    before = [resident.add("m.room.message", "", {"body": f"m{i}"}) for i in range(HISTORY)]
    hs.remote_rooms._client = ScriptedResident(resident)  # type: ignore[assignment]
    history = ResidentHistory(resident)
    hs.rooms._backfiller._requests = history  # type: ignore[union-attr]
    _, tok = await register(client, "alice")
    since = (await sync(client, tok))["next_batch"]
    r = await join(client, tok)
    assert r.status_code == 200, r.text
    synced = await sync(client, tok, since)
    since = synced["next_batch"]

    seen = await page_back(client, tok, ROOM, 8)

    assert any("/backfill/" in p for p in history.asked)
    assert len(seen) == len(set(seen))
    # Our join, then the 50 messages newest first, then the room's setup.
    assert seen[1 : HISTORY + 1] == before[::-1]
    assert seen[-1] == resident.state[("m.room.create", "")]
    assert await hs.event_store.get_backward_extremities(ROOM) == []
    body = await sync(client, tok, since)
    assert (
        body.get("rooms", {}).get("join", {}).get(ROOM, {}).get("timeline", {}).get("events", [])
        == []
    )
