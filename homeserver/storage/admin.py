"""What the admin API reads and sets: accounts listed and flagged, rate-limit overrides,
where sessions were seen, blocked rooms (issue 22)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.core.ids import UserID
from homeserver.storage.database import Database
from homeserver.storage.schema import (
    account_data,
    blocked_rooms,
    devices,
    profiles,
    ratelimit_overrides,
    user_ips,
    user_moderation,
    user_threepids,
    users,
)


@dataclass(frozen=True, slots=True)
class Moderation:
    shadow_banned: bool = False
    suspended: bool = False
    locked: bool = False
    erased: bool = False
    user_type: str | None = None


@dataclass(frozen=True, slots=True)
class UserRecord:
    """An account as the admin API shows it."""

    user_id: UserID
    is_admin: bool
    deactivated: bool
    created_ts: int
    displayname: str | None
    avatar_url: str | None
    moderation: Moderation
    last_seen_ts: int | None


@dataclass(frozen=True, slots=True)
class UserQuery:
    """Filters and order of GET /_synapse/admin/v2/users."""

    offset: int
    limit: int
    name: str | None = None  # in the user ID or the display name
    user_id: str | None = None  # in the user ID
    guests: bool = True  # there are no guest accounts: nothing to leave out
    deactivated: bool = False  # include deactivated accounts
    # v3: True only deactivated accounts, False none, None both (``deactivated`` is unused).
    only_deactivated: bool | None = None
    admins: bool | None = None  # only admins, no admins, or both
    locked: bool = False  # include locked accounts
    order_by: str = "name"
    backwards: bool = False


@dataclass(frozen=True, slots=True)
class SeenConnection:
    device_id: str
    ip: str
    user_agent: str
    last_seen: int


@dataclass(frozen=True, slots=True)
class RoomBlock:
    room_id: str
    user_id: str
    blocked_ts: int


_m = user_moderation.c
_LAST_SEEN = (
    sa.select(devices.c.user_id, sa.func.max(devices.c.last_seen_ts).label("last_seen_ts"))
    .group_by(devices.c.user_id)
    .subquery("last_seen")
)
_USER_COLUMNS = (
    users.c.user_id,
    users.c.is_admin,
    users.c.deactivated,
    users.c.created_ts,
    profiles.c.displayname,
    profiles.c.avatar_url,
    sa.func.coalesce(_m.shadow_banned, False).label("shadow_banned"),
    sa.func.coalesce(_m.suspended, False).label("suspended"),
    sa.func.coalesce(_m.locked, False).label("locked"),
    sa.func.coalesce(_m.erased, False).label("erased"),
    _m.user_type,
    _LAST_SEEN.c.last_seen_ts,
)
_USERS_FROM = (
    users.outerjoin(profiles, profiles.c.user_id == users.c.user_id)
    .outerjoin(user_moderation, _m.user_id == users.c.user_id)
    .outerjoin(_LAST_SEEN, _LAST_SEEN.c.user_id == users.c.user_id)
)
# The orders of GET /_synapse/admin/v2/users; each ends with the user ID, for a stable order.
USER_ORDERS: dict[str, sa.ColumnElement[object]] = {
    "name": users.c.user_id,
    "is_guest": sa.literal(False),
    "admin": users.c.is_admin,
    "user_type": _m.user_type,
    "deactivated": users.c.deactivated,
    "shadow_banned": sa.func.coalesce(_m.shadow_banned, False),
    "displayname": profiles.c.displayname,
    "avatar_url": profiles.c.avatar_url,
    "creation_ts": users.c.created_ts,
    "last_seen_ts": _LAST_SEEN.c.last_seen_ts,
}


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def _user_record(r: Any) -> UserRecord:
    return UserRecord(
        UserID(str(r.user_id)),
        bool(r.is_admin),
        bool(r.deactivated),
        int(r.created_ts),
        r.displayname,
        r.avatar_url,
        Moderation(
            bool(r.shadow_banned),
            bool(r.suspended),
            bool(r.locked),
            bool(r.erased),
            r.user_type,
        ),
        None if r.last_seen_ts is None else int(r.last_seen_ts),
    )


class AdminStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- accounts ----------------------------------------------------------------------------

    async def list_users(self, query: UserQuery) -> tuple[list[UserRecord], int]:
        """One page of accounts and how many match in all."""
        where: list[sa.ColumnElement[bool]] = []
        if query.name is not None:
            pattern = _like(query.name)
            where.append(
                sa.or_(
                    sa.func.lower(users.c.user_id).like(pattern, escape="\\"),
                    sa.func.lower(profiles.c.displayname).like(pattern, escape="\\"),
                )
            )
        elif query.user_id is not None:
            where.append(sa.func.lower(users.c.user_id).like(_like(query.user_id), escape="\\"))
        if query.only_deactivated is not None:
            where.append(users.c.deactivated.is_(query.only_deactivated))
        elif not query.deactivated:
            where.append(users.c.deactivated.is_(False))
        if not query.locked:
            where.append(sa.func.coalesce(_m.locked, False).is_(False))
        if query.admins is not None:
            where.append(users.c.is_admin.is_(query.admins))
        order = USER_ORDERS[query.order_by]
        ordering = [order.desc() if query.backwards else order.asc()]
        if query.order_by != "name":
            ordering.append(users.c.user_id.asc())
        select = sa.select(*_USER_COLUMNS).select_from(_USERS_FROM).where(*where)
        count = sa.select(sa.func.count()).select_from(_USERS_FROM).where(*where)
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select.order_by(*ordering).offset(query.offset).limit(query.limit)
                )
            ).all()
            total = int((await conn.execute(count)).scalar_one())
        return [_user_record(r) for r in rows], total

    async def get_user(self, user_id: UserID) -> UserRecord | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(*_USER_COLUMNS)
                    .select_from(_USERS_FROM)
                    .where(users.c.user_id == user_id)
                )
            ).first()
        return None if row is None else _user_record(row)

    async def set_admin(self, user_id: UserID, admin: bool) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(users).where(users.c.user_id == user_id).values(is_admin=admin)
            )

    async def reactivate(self, user_id: UserID) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(users).where(users.c.user_id == user_id).values(deactivated=False)
            )

    async def get_moderation(self, user_id: UserID) -> Moderation:
        async with self._db.read() as conn:
            r = (
                await conn.execute(sa.select(user_moderation).where(_m.user_id == user_id))
            ).first()
        if r is None:
            return Moderation()
        return Moderation(
            bool(r.shadow_banned), bool(r.suspended), bool(r.locked), bool(r.erased), r.user_type
        )

    async def set_moderation(self, user_id: UserID, **changes: object) -> Moderation:
        """Change some of the flags (``shadow_banned=True``, ``user_type=None``...); returns
        them all as they now are."""
        unknown = set(changes) - {"shadow_banned", "suspended", "locked", "erased", "user_type"}
        if unknown:
            raise ValueError(f"not a moderation column: {sorted(unknown)}")
        async with self._db.write() as conn:
            r = (
                await conn.execute(sa.select(user_moderation).where(_m.user_id == user_id))
            ).first()
            row: dict[str, object] = {
                "user_id": user_id,
                "shadow_banned": False,
                "suspended": False,
                "locked": False,
                "erased": False,
                "user_type": None,
            }
            if r is not None:
                row.update(r._mapping)
            row.update(changes)
            await conn.execute(self._db.upsert(user_moderation, row, keys=("user_id",)))
        return Moderation(
            bool(row["shadow_banned"]),
            bool(row["suspended"]),
            bool(row["locked"]),
            bool(row["erased"]),
            None if row["user_type"] is None else str(row["user_type"]),
        )

    # --- rate-limit overrides ----------------------------------------------------------------

    async def get_ratelimit_override(self, user_id: UserID) -> tuple[int, int] | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(ratelimit_overrides).where(ratelimit_overrides.c.user_id == user_id)
                )
            ).first()
        return None if r is None else (int(r.messages_per_second), int(r.burst_count))

    async def get_ratelimit_overrides(self) -> dict[str, tuple[int, int]]:
        async with self._db.read() as conn:
            rows = (await conn.execute(sa.select(ratelimit_overrides))).all()
        return {r.user_id: (int(r.messages_per_second), int(r.burst_count)) for r in rows}

    async def set_ratelimit_override(self, user_id: UserID, per_second: int, burst: int) -> None:
        row = {"user_id": user_id, "messages_per_second": per_second, "burst_count": burst}
        async with self._db.write() as conn:
            await conn.execute(self._db.upsert(ratelimit_overrides, row, keys=("user_id",)))

    async def delete_ratelimit_override(self, user_id: UserID) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(ratelimit_overrides).where(ratelimit_overrides.c.user_id == user_id)
            )

    # --- sessions ----------------------------------------------------------------------------

    async def record_connection(
        self, user_id: str, device_id: str, ip: str, user_agent: str, now_ms: int
    ) -> None:
        """The session was seen now from ``ip`` with ``user_agent``; so was its device."""
        row = {
            "user_id": user_id,
            "device_id": device_id,
            "ip": ip,
            "user_agent": user_agent,
            "last_seen": now_ms,
        }
        async with self._db.write() as conn:
            await conn.execute(
                self._db.upsert(user_ips, row, keys=("user_id", "device_id", "ip", "user_agent"))
            )
            await conn.execute(
                sa.update(devices)
                .where(devices.c.user_id == user_id, devices.c.device_id == device_id)
                .values(last_seen_ts=now_ms, last_seen_ip=ip)
            )

    async def get_connections(self, user_id: UserID) -> list[SeenConnection]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(user_ips)
                    .where(user_ips.c.user_id == user_id)
                    .order_by(user_ips.c.device_id, user_ips.c.last_seen)
                )
            ).all()
        return [SeenConnection(r.device_id, r.ip, r.user_agent, int(r.last_seen)) for r in rows]

    async def last_user_agents(self, user_id: UserID) -> dict[str, str]:
        """device ID -> the user agent it was last seen with."""
        found: dict[str, tuple[int, str]] = {}
        for c in await self.get_connections(user_id):
            if c.device_id not in found or c.last_seen >= found[c.device_id][0]:
                found[c.device_id] = (c.last_seen, c.user_agent)
        return {device: agent for device, (_, agent) in found.items()}

    async def prune_connections(self, before_ms: int) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(sa.delete(user_ips).where(user_ips.c.last_seen < before_ms))
        return int(result.rowcount)

    async def delete_connections(self, user_id: UserID, device_ids: Sequence[str]) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(user_ips).where(
                    user_ips.c.user_id == user_id, user_ips.c.device_id.in_(list(device_ids))
                )
            )

    # --- rooms -------------------------------------------------------------------------------

    async def block_room(self, room_id: str, user_id: str, now_ms: int) -> None:
        row = {"room_id": room_id, "user_id": user_id, "blocked_ts": now_ms}
        async with self._db.write() as conn:
            await conn.execute(self._db.insert_ignore(blocked_rooms, row, keys=("room_id",)))

    async def unblock_room(self, room_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(sa.delete(blocked_rooms).where(blocked_rooms.c.room_id == room_id))

    async def is_room_blocked(self, room_id: str) -> bool:
        return await self.get_room_block(room_id) is not None

    async def get_room_block(self, room_id: str) -> RoomBlock | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(blocked_rooms).where(blocked_rooms.c.room_id == room_id)
                )
            ).first()
        return None if r is None else RoomBlock(r.room_id, r.user_id, int(r.blocked_ts))

    # --- account data and addresses ----------------------------------------------------------

    async def get_account_data(
        self, user_id: UserID
    ) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
        """The user's global account data by type, and their rooms' by room and type."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(account_data.c.room_id, account_data.c.type, account_data.c.content)
                    .where(account_data.c.user_id == user_id)
                    .order_by(account_data.c.room_id, account_data.c.type)
                )
            ).all()
        global_data: dict[str, object] = {}
        rooms: dict[str, dict[str, object]] = {}
        for r in rows:
            if r.room_id == "":
                global_data[r.type] = r.content
            else:
                rooms.setdefault(r.room_id, {})[r.type] = r.content
        return global_data, rooms

    async def replace_threepids(
        self, user_id: UserID, threepids: Sequence[tuple[str, str]], now_ms: int
    ) -> list[tuple[str, str]]:
        """The user's addresses become ``threepids`` (medium, address), in one transaction;
        returns those held by another account, which are left to it."""
        taken: list[tuple[str, str]] = []
        t = user_threepids.c
        async with self._db.write() as conn:
            await conn.execute(sa.delete(user_threepids).where(t.user_id == user_id))
            for medium, address in threepids:
                owner = (
                    await conn.execute(
                        sa.select(t.user_id).where(t.medium == medium, t.address == address)
                    )
                ).scalar()
                if owner is not None:
                    taken.append((medium, address))
                    continue
                await conn.execute(
                    sa.insert(user_threepids).values(
                        medium=medium,
                        address=address,
                        user_id=user_id,
                        validated_at=now_ms,
                        added_at=now_ms,
                    )
                )
        return taken
