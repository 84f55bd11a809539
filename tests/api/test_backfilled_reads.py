"""Reads that must find history backfilled from another server (positions at or below
``BACKFILL_BASE``, numbered downwards in the order it was fetched, not the room's): the
admin API's room messages and its choice of a user's events to redact, and search (results,
their order, pagination across them and their context)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from homeserver.core.types import JsonDict
from homeserver.storage.admin_rooms import AdminRoomStore
from homeserver.storage.schema import BACKFILL_BASE
from tests.api.admin_helpers import call, make_admin
from tests.api.test_backfill import Fed, Origin, fed_online, origin, page_back, with_a_gap
from tests.api.test_incoming_pipeline import EVE
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, checked, register

__all__ = ["fed_online", "origin"]  # the fixtures, shared with the backfill tests

V3 = "/_matrix/client/v3"
MISSING = 11  # the gap's last event and those /get_missing_events brought: served live


async def test_admin_reads_find_backfilled_history(
    fed_online: Fed, origin: Origin, remote: FakeRemote
) -> None:
    hs, client = fed_online
    room, tok, rename_id, ids = await with_a_gap(client, hs, remote, origin)
    seen = await page_back(client, tok, room.room_id, 10)
    backfilled = ids[:-MISSING]
    for event_id in backfilled:
        stored = await hs.event_store.get_event(event_id)
        assert stored is not None and stored.stream_ordering <= BACKFILL_BASE

    # The admin API pages the room like /messages: backfilled history in its place.
    admin = await make_admin(hs, client)
    room_path = f"/v1/rooms/{quote(room.room_id)}/messages"
    got: list[str] = []
    token: str | None = None
    for _ in range(50):
        query = "?dir=b&limit=9" + (f"&from={quote(token)}" if token else "")
        page = await call(client, admin, "GET", room_path + query)
        got.extend(e["event_id"] for e in page["chunk"])
        token = page.get("end")
        if token is None:
            break
    assert got == seen
    forwards = await call(client, admin, "GET", room_path + "?dir=f&limit=1000")
    assert [e["event_id"] for e in forwards["chunk"]] == seen[::-1]
    # Its tokens are /messages' tokens: the user can page on from the admin's.
    page = await call(client, admin, "GET", room_path + "?dir=b&limit=20")
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/messages",
        params={"dir": "b", "limit": "5", "from": page["end"]},
        headers=auth_header(tok),
    )
    assert [e["event_id"] for e in checked(r)["chunk"]] == seen[20:25]
    r = await client.get(
        "/_synapse/admin" + room_path, params={"from": "nope"}, headers=auth_header(admin)
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), r.text

    # The events of a user a redaction would take: the newest first in the room's order,
    # backfilled ones included.
    # Her join and rename are state, never taken.
    taken = await AdminRoomStore(hs.db).user_events(EVE, [room.room_id], 100, None, None)
    assert [event_id for _, event_id in taken] == ids[::-1]
    assert rename_id not in {event_id for _, event_id in taken}
    five = await AdminRoomStore(hs.db).user_events(EVE, [room.room_id], 5, None, None)
    assert [event_id for _, event_id in five] == ids[::-1][:5]


async def search(
    client: Any, tok: str, term: str, next_batch: str | None = None, **extra: Any
) -> dict[str, Any]:
    body = {"search_categories": {"room_events": {"search_term": term, **extra}}}
    params = {"next_batch": next_batch} if next_batch else None
    r = await client.post(f"{V3}/search", params=params, headers=auth_header(tok), json=body)
    result: dict[str, Any] = checked(r)["search_categories"]["room_events"]
    return result


async def test_search_finds_backfilled_history(
    fed_online: Fed, origin: Origin, remote: FakeRemote, db_url: str
) -> None:
    hs, client = fed_online
    room, tok, _, ids = await with_a_gap(client, hs, remote, origin)
    await page_back(client, tok, room.room_id, 50)
    # "m1" is a prefix of m1 and m10 to m19: all backfilled (ids[:-11] are m0 to m38).
    expected = [ids[i] for i in (19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 1)]
    result = await search(client, tok, "m1", order_by="recent", filter={"limit": 20})
    assert result["count"] == 11
    assert [r["result"]["event_id"] for r in result["results"]] == expected
    # Paged three at a time across them: the same, once each.
    paged: list[str] = []
    token: str | None = None
    for _ in range(10):
        page = await search(client, tok, "m1", token, order_by="recent", filter={"limit": 3})
        paged.extend(r["result"]["event_id"] for r in page["results"])
        token = page.get("next_batch")
        if token is None:
            break
    assert paged == expected
    # Ranked, they are all there too.
    ranked = await search(client, tok, "m1", order_by="rank", filter={"limit": 20})
    assert sorted(r["result"]["event_id"] for r in ranked["results"]) == sorted(expected)
    # Live and backfilled together: m40 to m49 are live, m4 backfilled.
    live_and_old = await search(client, tok, "m4", order_by="recent", filter={"limit": 4})
    first = [r["result"]["event_id"] for r in live_and_old["results"]]
    assert first == [ids[49], ids[48], ids[47], ids[46]]
    rest: list[str] = []
    token = live_and_old.get("next_batch")
    while token is not None:
        page = await search(client, tok, "m4", token, order_by="recent", filter={"limit": 4})
        rest.extend(r["result"]["event_id"] for r in page["results"])
        token = page.get("next_batch")
    assert rest == [ids[i] for i in (45, 44, 43, 42, 41, 40, 4)]

    # A backfilled result's context: its neighbours in the room.
    result = await search(
        client,
        tok,
        "m15",
        order_by="recent",
        event_context={"before_limit": 2, "after_limit": 2},
    )
    [hit] = result["results"]
    context = hit["context"]
    assert [e["event_id"] for e in context["events_before"]] == [ids[14], ids[13]]
    assert [e["event_id"] for e in context["events_after"]] == [ids[16], ids[17]]
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/messages",
        params={"dir": "b", "limit": "2", "from": context["start"]},
        headers=auth_header(tok),
    )
    assert [e["event_id"] for e in checked(r)["chunk"]] == [ids[12], ids[11]]


async def test_search_tokens_of_backfilled_positions(
    fed_online: Fed, origin: Origin, remote: FakeRemote
) -> None:
    _, client = fed_online
    body = {"search_categories": {"room_events": {"search_term": "x", "order_by": "recent"}}}
    _, tok = await register(client, "alice")
    for token in (
        "t-5_1_1",  # a position that is never served
        f"t{BACKFILL_BASE}",  # a backfilled position needs its timestamp and depth
        f"t{BACKFILL_BASE}_1",
        f"t{BACKFILL_BASE}_x_1",
        f"t{BACKFILL_BASE}_1_-1",
        f"t{BACKFILL_BASE - 2**63}_1_1",
        "t5_1_1",  # a live position has neither
        f"r{BACKFILL_BASE}",
    ):
        r = await client.post(
            f"{V3}/search", params={"next_batch": token}, headers=auth_header(tok), json=body
        )
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), token
    ok: JsonDict = checked(
        await client.post(
            f"{V3}/search",
            params={"next_batch": f"t{BACKFILL_BASE - 1}_5_3"},
            headers=auth_header(tok),
            json=body,
        )
    )
    assert ok["search_categories"]["room_events"]["results"] == []
