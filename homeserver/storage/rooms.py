"""Rooms, their memberships as of now, aliases and the public room directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import orjson
import sqlalchemy as sa
from cachetools import LRUCache

from homeserver.storage.database import Database, prepared
from homeserver.storage.events import EventStore, Extremity
from homeserver.storage.schema import (
    appservice_room_list,
    current_state,
    event_forward_extremities,
    events,
    room_aliases,
    room_memberships,
    rooms,
)

# How many memberships syncs keep, all users together (RoomStore.get_sync_memberships):
# counted by membership, not by user, so that accounts in thousands of rooms cannot make
# it hold hundreds of megabytes (~250 bytes each: ~25 MB at most).
SYNC_MEMBERSHIPS_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class Room:
    room_id: str
    room_version: str
    creator: str
    is_public: bool
    latest_event_id: str | None
    current_depth: int
    current_state_group: int | None
    # Filled by get_room_head only: what the room's next local event builds on, deepest
    # (then newest) first.
    forward_extremities: tuple[Extremity, ...] = ()


@dataclass(frozen=True, slots=True)
class Membership:
    room_id: str
    user_id: str
    membership: str
    event_id: str
    sender: str
    stream_ordering: int
    forgotten: bool
    displayname: str | None = None
    avatar_url: str | None = None


def _membership(r: sa.Row[tuple[object, ...]]) -> Membership:
    return Membership(
        r.room_id,
        r.user_id,
        r.membership,
        r.event_id,
        r.sender,
        int(r.stream_ordering),
        bool(r.forgotten),
        r.displayname,
        r.avatar_url,
    )


def _room(r: sa.Row[tuple[object, ...]]) -> Room:
    return Room(
        r.room_id,
        r.room_version,
        r.creator,
        bool(r.is_public),
        r.latest_event_id,
        int(r.current_depth),
        r.current_state_group,
    )


# Hot statements, built once: building a statement costs more than running it on SQLite.
_m = room_memberships
_GET_ROOM = prepared(sa.select(rooms).where(rooms.c.room_id == sa.bindparam("room_id")))
_ROOM_VERSIONS = prepared(
    sa.select(rooms.c.room_id, rooms.c.room_version).where(
        rooms.c.room_id.in_(sa.bindparam("rooms", expanding=True))
    )
)
# The room and its forward extremities in one read, so that they agree: rooms.latest_event_id
# (the sender's compare-and-swap token) moves with every change of the extremities.
_f = event_forward_extremities
_GET_ROOM_HEAD = prepared(
    sa.select(
        rooms,
        _f.c.event_id.label("extremity"),
        events.c.depth.label("extremity_depth"),
        events.c.state_group.label("extremity_state_group"),
    )
    .select_from(
        rooms.outerjoin(_f, _f.c.room_id == rooms.c.room_id).outerjoin(
            events, events.c.event_id == _f.c.event_id
        )
    )
    .where(rooms.c.room_id == sa.bindparam("room_id"))
    .order_by(events.c.depth.desc(), events.c.stream_ordering.desc())
)
_GET_MEMBERSHIP = prepared(
    sa.select(_m).where(
        _m.c.room_id == sa.bindparam("room_id"), _m.c.user_id == sa.bindparam("user_id")
    )
)
_USER_MEMBERSHIPS = prepared(sa.select(_m).where(_m.c.user_id == sa.bindparam("user_id")))
_USER_MEMBERSHIPS_IN = prepared(
    _USER_MEMBERSHIPS.where(_m.c.membership.in_(sa.bindparam("memberships", expanding=True)))
)
_COUNT_MEMBERSHIPS = prepared(
    sa.select(_m.c.membership, sa.func.count())
    .where(_m.c.room_id == sa.bindparam("room_id"))
    .group_by(_m.c.membership)
)
_COUNT_MEMBERSHIPS_OF = prepared(
    sa.select(_m.c.room_id, _m.c.membership, sa.func.count())
    .where(_m.c.room_id.in_(sa.bindparam("rooms", expanding=True)))
    .group_by(_m.c.room_id, _m.c.membership)
)
_HEROES = prepared(
    sa.select(_m.c.user_id)
    .where(
        _m.c.room_id == sa.bindparam("room_id"),
        _m.c.membership.in_(["join", "invite"]),
        _m.c.user_id != sa.bindparam("exclude"),
    )
    .order_by(_m.c.user_id)
    .limit(sa.bindparam("limit"))
)


class RoomStore:
    def __init__(self, db: Database, events: EventStore | None = None) -> None:
        self._db = db
        self._versions: LRUCache[str, str] = LRUCache(maxsize=100_000)
        # user -> (events position, their memberships as of at least that position), for
        # syncs: checked against the events since (``events``' windows) before use.
        self._events = events
        self._for_sync: LRUCache[str, tuple[int, tuple[Membership, ...]]] = LRUCache(
            maxsize=SYNC_MEMBERSHIPS_KEPT, getsizeof=lambda kept: len(kept[1]) + 1
        )
        # Moves on every drop from ``_for_sync``: what a read found is kept only if no drop
        # came during it (a forgotten room on another worker).
        self._dropped = 0

    async def create_room(
        self, room_id: str, room_version: str, creator: str, created_ts: int, is_public: bool
    ) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                self._db.insert_ignore(
                    rooms,
                    {
                        "room_id": room_id,
                        "room_version": room_version,
                        "creator": creator,
                        "created_ts": created_ts,
                        "is_public": is_public,
                        "current_depth": 0,
                    },
                    keys=("room_id",),
                )
            )
        return result.rowcount > 0

    async def get_room(self, room_id: str) -> Room | None:
        async with self._db.read() as conn:
            r = (await conn.execute(_GET_ROOM, {"room_id": room_id})).first()
        return _room(r) if r is not None else None

    async def get_room_head(self, room_id: str) -> Room | None:
        """The room with its forward extremities (what a local send builds on)."""
        async with self._db.read() as conn:
            rows = (await conn.execute(_GET_ROOM_HEAD, {"room_id": room_id})).all()
        if not rows:
            return None
        extremities = tuple(
            Extremity(r.extremity, int(r.extremity_depth), int(r.extremity_state_group))
            for r in rows
            if r.extremity is not None and r.extremity_depth is not None
        )
        return replace(_room(rows[0]), forward_extremities=extremities)

    async def get_room_version(self, room_id: str) -> str | None:
        """The room's version; it never changes, so it is cached."""
        version = self._versions.get(room_id)
        if version is None:
            room = await self.get_room(room_id)
            if room is None:
                return None
            version = self._versions[room_id] = room.room_version
        return version

    async def set_public(self, room_id: str, is_public: bool) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(rooms).where(rooms.c.room_id == room_id).values(is_public=is_public)
            )

    # --- memberships -----------------------------------------------------------------------

    async def get_membership(self, room_id: str, user_id: str) -> Membership | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(_GET_MEMBERSHIP, {"room_id": room_id, "user_id": user_id})
            ).first()
        return _membership(r) if r is not None else None

    async def get_user_memberships(
        self, user_id: str, memberships: Sequence[str] | None = None
    ) -> list[Membership]:
        async with self._db.read() as conn:
            if memberships is None:
                rows = (await conn.execute(_USER_MEMBERSHIPS, {"user_id": user_id})).all()
            else:
                rows = (
                    await conn.execute(
                        _USER_MEMBERSHIPS_IN, {"user_id": user_id, "memberships": list(memberships)}
                    )
                ).all()
        return [_membership(r) for r in rows]

    async def get_sync_memberships(self, user_id: str, upto: int) -> Sequence[Membership]:
        """The user's memberships for a sync at the committed events position ``upto``.

        Kept per user with the position they were read at: a later sync uses them again when
        no membership event of the user lies in between (one window of the events stream,
        shared by every sync woken by the same events), so a message to a room costs its
        members no membership read. A forgotten room drops this worker's copy.
        """
        events = self._events
        kept = self._for_sync.get(user_id)
        if kept is not None and events is not None:
            position, found = kept
            if position >= upto:
                return found
            dropped = self._dropped
            window = await events.get_window(position, upto)
            if window is not None and user_id not in window.members:
                if self._dropped == dropped:
                    self._keep(user_id, upto, found)
                return found
        # Read after ``upto`` was committed, so it holds every change up to there.
        dropped = self._dropped
        found = tuple(await self.get_user_memberships(user_id))
        if events is not None and self._dropped == dropped:  # else it may predate a drop
            self._keep(user_id, upto, found)
        return found

    def _keep(self, user_id: str, position: int, found: tuple[Membership, ...]) -> None:
        if len(found) < SYNC_MEMBERSHIPS_KEPT:  # the cache refuses what exceeds it whole
            self._for_sync[user_id] = (position, found)

    async def get_room_members(
        self, room_id: str, memberships: Sequence[str] | None = None
    ) -> list[Membership]:
        query = sa.select(room_memberships).where(room_memberships.c.room_id == room_id)
        if memberships is not None:
            query = query.where(room_memberships.c.membership.in_(list(memberships)))
        async with self._db.read() as conn:
            rows = (await conn.execute(query.order_by(room_memberships.c.user_id))).all()
        return [_membership(r) for r in rows]

    async def count_memberships(self, room_id: str) -> dict[str, int]:
        async with self._db.read() as conn:
            rows = (await conn.execute(_COUNT_MEMBERSHIPS, {"room_id": room_id})).all()
        return {r[0]: int(r[1]) for r in rows}

    async def count_memberships_of(self, room_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """``count_memberships`` of several rooms in one statement."""
        found: dict[str, dict[str, int]] = {room_id: {} for room_id in room_ids}
        if not found:
            return found
        async with self._db.read() as conn:
            rows = (await conn.execute(_COUNT_MEMBERSHIPS_OF, {"rooms": list(found)})).all()
        for r in rows:
            found[r[0]][r[1]] = int(r[2])
        return found

    async def load_room_versions(self, room_ids: Sequence[str]) -> None:
        """Reads the versions of those rooms not cached yet, in one statement: the next
        ``get_room_version`` of each finds it cached."""
        missing = [room_id for room_id in room_ids if room_id not in self._versions]
        if not missing:
            return
        async with self._db.read() as conn:
            rows = (await conn.execute(_ROOM_VERSIONS, {"rooms": missing})).all()
        for r in rows:
            self._versions[r.room_id] = r.room_version

    async def get_heroes(self, room_id: str, exclude: str, limit: int) -> list[str]:
        """Joined or invited members other than ``exclude``, by user ID."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    _HEROES, {"room_id": room_id, "exclude": exclude, "limit": limit}
                )
            ).all()
        return [r.user_id for r in rows]

    async def set_forgotten(self, room_id: str, user_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(room_memberships)
                .where(room_memberships.c.room_id == room_id, room_memberships.c.user_id == user_id)
                .values(forgotten=True)
            )
        self._dropped += 1
        self._for_sync.pop(user_id, None)

    def forget_cached_user(self, user_id: str) -> None:
        """Read the user's memberships again (they forgot a room, on another worker)."""
        self._dropped += 1
        self._for_sync.pop(user_id, None)

    def forget_all_cached(self) -> None:
        self._dropped += 1
        self._for_sync.clear()

    def forget_cached_room(self, room_id: str) -> None:
        """The room was purged (the admin API): no kept membership may name it."""
        self._dropped += 1
        for user_id, (_, found) in list(self._for_sync.items()):
            if any(m.room_id == room_id for m in found):
                self._for_sync.pop(user_id, None)

    # --- aliases ---------------------------------------------------------------------------

    async def create_alias(self, alias: str, room_id: str, creator: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                self._db.insert_ignore(
                    room_aliases,
                    {"alias": alias, "room_id": room_id, "creator": creator},
                    keys=("alias",),
                )
            )
        return result.rowcount > 0

    async def get_alias(self, alias: str) -> tuple[str, str] | None:
        """(room_id, creator) of an alias."""
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(room_aliases.c.room_id, room_aliases.c.creator).where(
                        room_aliases.c.alias == alias
                    )
                )
            ).first()
        return (r.room_id, r.creator) if r is not None else None

    async def delete_alias(self, alias: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(sa.delete(room_aliases).where(room_aliases.c.alias == alias))

    async def get_aliases(self, room_id: str) -> list[str]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(room_aliases.c.alias)
                    .where(room_aliases.c.room_id == room_id)
                    .order_by(room_aliases.c.alias)
                )
            ).all()
        return [r.alias for r in rows]

    # --- directory -------------------------------------------------------------------------

    async def set_network_listing(
        self, appservice_id: str, network_id: str, room_id: str, public: bool
    ) -> None:
        """Publish (or withdraw) a room in an application service's network directory."""
        row = {"appservice_id": appservice_id, "network_id": network_id, "room_id": room_id}
        async with self._db.write() as conn:
            if public:
                await conn.execute(self._db.insert_ignore(appservice_room_list, row, tuple(row)))
            else:
                lst = appservice_room_list.c
                await conn.execute(
                    sa.delete(appservice_room_list).where(
                        lst.appservice_id == appservice_id,
                        lst.network_id == network_id,
                        lst.room_id == room_id,
                    )
                )

    async def get_public_room_ids(
        self, *, network: tuple[str, str] | None = None, all_networks: bool = False
    ) -> list[tuple[str, int]]:
        """Public rooms with their joined-member counts, largest first (then by room ID):
        the server's own list; or one application service network's (``network``: service
        ID and network ID); or, with ``all_networks``, both together."""
        joined = (
            sa.select(room_memberships.c.room_id, sa.func.count().label("n"))
            .where(room_memberships.c.membership == "join")
            .group_by(room_memberships.c.room_id)
            .subquery()
        )
        query = (
            sa.select(rooms.c.room_id, sa.func.coalesce(joined.c.n, 0).label("n"))
            .outerjoin(joined, joined.c.room_id == rooms.c.room_id)
            .where(_listed(network, all_networks))
            .order_by(sa.desc("n"), rooms.c.room_id)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.room_id, int(r.n)) for r in rows]

    async def get_current_state_contents(
        self, room_ids: Sequence[str], types: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        """room_id -> event type -> event JSON, for the state events with empty state keys."""
        if not room_ids:
            return {}
        query = (
            sa.select(current_state.c.room_id, current_state.c.type, events.c.json)
            .join(events, events.c.event_id == current_state.c.event_id)
            .where(
                current_state.c.room_id.in_(list(room_ids)),
                current_state.c.type.in_(list(types)),
                current_state.c.state_key == "",
            )
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            out.setdefault(r.room_id, {})[r.type] = r.json
        return out


def _listed(network: tuple[str, str] | None, all_networks: bool) -> sa.ColumnElement[bool]:
    """Which rooms a directory lists (see get_public_room_ids)."""
    lst = appservice_room_list.c
    in_network = sa.select(lst.room_id).where(lst.room_id == rooms.c.room_id)
    if network is not None:
        in_network = in_network.where(lst.appservice_id == network[0], lst.network_id == network[1])
        return sa.exists(in_network)
    if all_networks:
        return sa.or_(rooms.c.is_public.is_(True), sa.exists(in_network))
    return rooms.c.is_public.is_(True)


def content_field(event_json: str | None, key: str) -> str | None:
    """A non-empty string field of the content of an event of
    ``get_current_state_contents`` (None when unset, empty or not a string)."""
    if event_json is None:
        return None
    try:
        value = orjson.loads(event_json).get("content", {}).get(key)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None
