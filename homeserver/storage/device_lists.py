"""Device-list changes: the device-lists stream position of each user's latest change, and
the memberships that decide who is told about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.schema import device_list_changes, room_memberships

JOIN = "join"
DEPARTED = ("leave", "ban")


@dataclass(frozen=True, slots=True)
class MembershipChanges:
    """Between two event positions, as seen by one user.

    ``arrived``: users now joined to a room the user shares with them, who joined it in the
    range, or who were there when the user joined it. ``departed``: users who left or were
    banned from a room the user is in, or who are in a room the user left, in the range.
    """

    arrived: frozenset[str]
    departed: frozenset[str]


def _membership_changes_query() -> sa.CompoundSelect[Any]:
    """In one statement (every sync wake-up runs it): the user's own membership changes in
    a range, and those of others in the rooms the user is in now; ``own`` tells them apart."""
    m = room_memberships
    user_id: sa.BindParameter[str] = sa.bindparam("user_id")
    in_range = (
        m.c.stream_ordering > sa.bindparam("after"),
        m.c.stream_ordering <= sa.bindparam("upto"),
    )
    own = sa.select(sa.literal(True).label("own"), m.c.room_id, m.c.user_id, m.c.membership).where(
        m.c.user_id == user_id, *in_range
    )
    mine = m.alias("mine")
    my_rooms = sa.select(mine.c.room_id).where(mine.c.user_id == user_id, mine.c.membership == JOIN)
    others = sa.select(
        sa.literal(False).label("own"), m.c.room_id, m.c.user_id, m.c.membership
    ).where(m.c.room_id.in_(my_rooms), m.c.user_id != user_id, *in_range)
    return sa.union_all(own, others)


_MEMBERSHIP_CHANGES = prepared(_membership_changes_query())


class DeviceListStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def mark_changed(self, user_id: str) -> int:
        """Record that the user's devices or keys changed; returns the new position."""
        async with self._db.write() as conn:
            position = await self._db.next_position(conn, Stream.DEVICE_LISTS)
            await conn.execute(
                self._db.upsert(
                    device_list_changes,
                    {"user_id": user_id, "stream_position": position},
                    keys=("user_id",),
                )
            )
        return position

    async def position_of(self, user_id: str) -> int | None:
        """The position of the user's last device-list change; None if there was none."""
        async with self._db.read() as conn:
            return (
                await conn.execute(
                    sa.select(device_list_changes.c.stream_position).where(
                        device_list_changes.c.user_id == user_id
                    )
                )
            ).scalar_one_or_none()

    async def changed_between(self, after: int, upto: int) -> set[str]:
        """Users whose latest change is in (after, upto]; a later change shows up later."""
        t = device_list_changes
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(t.c.user_id).where(
                        t.c.stream_position > after, t.c.stream_position <= upto
                    )
                )
            ).all()
        return {r.user_id for r in rows}

    async def users_sharing_room(self, user_id: str) -> set[str]:
        """Everyone joined to a room the user is joined to, the user included."""
        mine = room_memberships.alias("mine")
        theirs = room_memberships.alias("theirs")
        query = (
            sa.select(theirs.c.user_id)
            .distinct()
            .join(mine, mine.c.room_id == theirs.c.room_id)
            .where(
                mine.c.user_id == user_id, mine.c.membership == JOIN, theirs.c.membership == JOIN
            )
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {r.user_id for r in rows}

    async def membership_changes(self, user_id: str, after: int, upto: int) -> MembershipChanges:
        """Membership changes in (after, upto] that matter to ``user_id``'s device lists.

        Reads current memberships: one changed again after ``upto`` is seen by the next
        range instead, which is late but never lost.
        """
        params = {"user_id": user_id, "after": after, "upto": upto}
        arrived: set[str] = set()
        departed: set[str] = set()
        async with self._db.read() as conn:
            rows = (await conn.execute(_MEMBERSHIP_CHANGES, params)).all()
            own = [r for r in rows if r.own]
            # The user's own joins and departures: everyone joined there arrives or departs.
            arrived |= await self._joined_members(
                conn, [r.room_id for r in own if r.membership == JOIN], user_id
            )
            departed |= await self._joined_members(
                conn, [r.room_id for r in own if r.membership in DEPARTED], user_id
            )
            # Others joining or leaving the rooms the user is in now.
            others = [r for r in rows if not r.own]
        for r in others:
            if r.membership == JOIN:
                arrived.add(r.user_id)
            elif r.membership in DEPARTED:
                departed.add(r.user_id)
        return MembershipChanges(frozenset(arrived), frozenset(departed))

    async def _joined_members(self, conn: Connection, room_ids: list[str], but: str) -> set[str]:
        if not room_ids:
            return set()
        m = room_memberships
        rows = (
            await conn.execute(
                sa.select(m.c.user_id).where(
                    m.c.room_id.in_(room_ids), m.c.membership == JOIN, m.c.user_id != but
                )
            )
        ).all()
        return {r.user_id for r in rows}
