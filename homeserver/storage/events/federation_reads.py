"""Reads of the room graph that other servers' requests need: which servers are in a room,
the prev_events edges of several events at once (backfill, missing events)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import event_edges, events, room_memberships

_m = room_memberships


class FederationReads:
    """What answering another server about a room reads beyond the event store's reads."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool:
        """Whether a user of ``server_name`` is joined to the room now."""
        query = (
            sa.select(_m.c.user_id)
            .where(
                _m.c.room_id == room_id,
                _m.c.membership == "join",
                _m.c.user_id.endswith(":" + server_name, autoescape=True),
            )
            .limit(1)
        )
        async with self._db.read() as conn:
            found = (await conn.execute(query)).first()
        return found is not None

    async def has_joined_member(self, room_id: str) -> bool:
        """Whether anyone is joined to the room now."""
        query = (
            sa.select(_m.c.user_id)
            .where(_m.c.room_id == room_id, _m.c.membership == "join")
            .limit(1)
        )
        async with self._db.read() as conn:
            found = (await conn.execute(query)).first()
        return found is not None

    async def joined_servers(self, room_id: str) -> list[str]:
        """The servers with a user joined to the room now, by name."""
        query = sa.select(_m.c.user_id).where(_m.c.room_id == room_id, _m.c.membership == "join")
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return sorted({r.user_id.split(":", 1)[1] for r in rows})

    async def get_prev_edges(self, event_ids: Iterable[str]) -> dict[str, list[str]]:
        """Each event's prev_events as recorded in the graph (events of the graph only:
        outliers have no edges)."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return {}
        query = sa.select(event_edges.c.event_id, event_edges.c.prev_event_id).where(
            event_edges.c.event_id.in_(ids)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        found: dict[str, list[str]] = {}
        for r in rows:
            found.setdefault(r.event_id, []).append(r.prev_event_id)
        return found

    async def get_room_of_events(self, event_ids: Iterable[str]) -> dict[str, str]:
        """The room of each known event."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return {}
        query = sa.select(events.c.event_id, events.c.room_id).where(events.c.event_id.in_(ids))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {r.event_id: r.room_id for r in rows}
