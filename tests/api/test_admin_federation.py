"""The admin API on federation destinations, on both databases: the list with its filter,
orders and pages, one destination, the rooms shared with it, the back-off reset."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.storage.schema import room_memberships
from tests.api.admin_helpers import call, make_admin, refused_to_non_admins
from tests.conftest import make_config
from tests.helpers import create_room, register, serve

BASE = "/v1/federation/destinations"


async def _join_remote(hs: Homeserver, room_id: str, user_id: str) -> None:
    """A remote member in the room's current state, as the federation would have put it."""
    async with hs.db.write() as conn:
        await conn.execute(
            sa.insert(room_memberships).values(
                room_id=room_id,
                user_id=user_id,
                membership="join",
                event_id=f"$join-{user_id}",
                sender=user_id,
                stream_ordering=1,
                forgotten=False,
            )
        )


async def test_destinations(tmp_path: Path, db_url: str) -> None:
    # The sender is off: nothing but the test changes the destinations' back-off.
    config = make_config(tmp_path, db_url, federation={"enabled": False})
    clock = FakeClock()
    async with serve(config, clock) as (hs, client):
        admin = await make_admin(hs, client)
        _, token = await register(client, "bob")
        await refused_to_non_admins(
            client,
            token,
            [
                ("GET", BASE, None),
                ("GET", f"{BASE}/one.example", None),
                ("GET", f"{BASE}/one.example/rooms", None),
                ("POST", f"{BASE}/one.example/reset_connection", {}),
            ],
        )
        assert await call(client, admin, "GET", BASE) == {"destinations": [], "total": 0}

        store = hs.federation_queue_store
        await store.queue_edu(
            ["one.example", "two.example", "three.org:8448"], "m.typing", "{}", None, 0
        )
        await store.backed_off("two.example", 60_000, 1_060_000)

        listed = await call(client, admin, "GET", BASE)
        assert listed["total"] == 3 and "next_token" not in listed
        assert [d["destination"] for d in listed["destinations"]] == [
            "one.example",
            "three.org:8448",
            "two.example",
        ]
        assert listed["destinations"][0] == {
            "destination": "one.example",
            "retry_last_ts": 0,
            "retry_interval": 0,
            "failure_ts": None,
            "last_successful_stream_ordering": None,
        }
        two = await call(client, admin, "GET", f"{BASE}/two.example")
        assert two["retry_interval"] == 60_000
        assert two["retry_last_ts"] == 1_000_000 and two["failure_ts"] == 1_000_000

        page = await call(client, admin, "GET", f"{BASE}?limit=2&dir=b")
        assert [d["destination"] for d in page["destinations"]] == [
            "two.example",
            "three.org:8448",
        ]
        assert page["next_token"] == "2"
        rest = await call(client, admin, "GET", f"{BASE}?limit=2&dir=b&from=2")
        assert [d["destination"] for d in rest["destinations"]] == ["one.example"]
        by_retry = await call(client, admin, "GET", f"{BASE}?order_by=retry_interval&dir=b")
        assert by_retry["destinations"][0]["destination"] == "two.example"
        found = await call(client, admin, "GET", f"{BASE}?destination=.EXAMPLE")
        assert [d["destination"] for d in found["destinations"]] == [
            "one.example",
            "two.example",
        ]
        # The filter is a plain substring: LIKE's wildcards match themselves only.
        none = await call(client, admin, "GET", f"{BASE}?destination=%25")
        assert none == {"destinations": [], "total": 0}

        # Rooms shared with a destination: those where one of its users is joined.
        room_a = await create_room(client, admin)
        room_b = await create_room(client, admin)
        await _join_remote(hs, room_a, "@alice:one.example")
        await _join_remote(hs, room_b, "@carol:one.example")
        await _join_remote(hs, room_b, "@dan:one.example")
        await _join_remote(hs, room_b, "@erin:two.example")
        rooms = await call(client, admin, "GET", f"{BASE}/one.example/rooms")
        assert rooms["total"] == 2
        assert [r["room_id"] for r in rooms["rooms"]] == sorted([room_a, room_b])
        assert all(isinstance(r["stream_ordering"], int) for r in rooms["rooms"])
        first = await call(client, admin, "GET", f"{BASE}/one.example/rooms?limit=1&dir=b")
        assert [r["room_id"] for r in first["rooms"]] == [max(room_a, room_b)]
        assert first["next_token"] == "1"
        assert (await call(client, admin, "GET", f"{BASE}/three.org:8448/rooms")) == {
            "rooms": [],
            "total": 0,
        }

        # The back-off ends: the sender tries the destination again at once.
        assert await call(client, admin, "POST", f"{BASE}/two.example/reset_connection", {}) == {}
        two = await call(client, admin, "GET", f"{BASE}/two.example")
        assert (two["retry_interval"], two["retry_last_ts"], two["failure_ts"]) == (0, 0, None)
        assert hs.federation_wake.is_set()

        # Bad input: clear errors.
        for query in ("order_by=name", "dir=x", "from=-1", "limit=-2", "limit=x"):
            await call(client, admin, "GET", f"{BASE}?{query}", None, 400, "M_INVALID_PARAM")
        for path in ("/rooms?dir=x", "/rooms?order_by=room_id", "/rooms?from=-1"):
            await call(
                client, admin, "GET", f"{BASE}/one.example{path}", None, 400, "M_INVALID_PARAM"
            )
        for method, suffix in (("GET", ""), ("GET", "/rooms"), ("POST", "/reset_connection")):
            await call(
                client, admin, method, f"{BASE}/unknown.example{suffix}", {}, 404, "M_NOT_FOUND"
            )
            await call(
                client, admin, method, f"{BASE}/bad_name!{suffix}", {}, 400, "M_INVALID_PARAM"
            )
