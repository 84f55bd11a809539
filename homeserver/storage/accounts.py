"""Users, profiles, devices, access and refresh tokens."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.core.ids import UserID
from homeserver.storage.database import Connection, Database
from homeserver.storage.schema import (
    access_tokens,
    devices,
    profiles,
    refresh_tokens,
    user_moderation,
    users,
)


@dataclass(frozen=True, slots=True)
class User:
    user_id: UserID
    password_hash: str | None
    is_admin: bool
    deactivated: bool
    created_ts: int


@dataclass(frozen=True, slots=True)
class ActingUser:
    deactivated: bool
    shadow_banned: bool
    suspended: bool
    locked: bool


@dataclass(frozen=True, slots=True)
class Profile:
    displayname: str | None
    avatar_url: str | None


@dataclass(frozen=True, slots=True)
class Device:
    user_id: UserID
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: int
    user_id: UserID
    device_id: str
    valid_until_ms: int | None
    is_admin: bool
    deactivated: bool
    # What administrators set on the account (homeserver/storage/admin.py).
    shadow_banned: bool = False
    suspended: bool = False
    locked: bool = False
    is_guest: bool = False


@dataclass(frozen=True, slots=True)
class RefreshTokenInfo:
    token_id: int
    user_id: UserID
    device_id: str
    next_token_id: int | None
    oauth_client_id: str | None = None  # the OAuth client the session belongs to


class _AlreadyExchanged(Exception):
    pass


class AccountStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_user(
        self,
        user_id: UserID,
        password_hash: str | None,
        *,
        is_admin: bool,
        created_ts: int,
        displayname: str | None,
        is_guest: bool = False,
    ) -> bool:
        """Insert the user and their profile; False if the ID is taken."""
        async with self._db.write() as conn:
            result = await conn.execute(
                self._db.insert_ignore(
                    users,
                    {
                        "user_id": user_id,
                        "password_hash": password_hash,
                        "is_admin": is_admin,
                        "deactivated": False,
                        "created_ts": created_ts,
                        "is_guest": is_guest,
                    },
                    keys=("user_id",),
                )
            )
            if result.rowcount == 0:
                return False
            await conn.execute(
                sa.insert(profiles).values(
                    user_id=user_id, displayname=displayname, avatar_url=None
                )
            )
        return True

    async def get_user(self, user_id: UserID) -> User | None:
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.user_id == user_id))).first()
        if row is None:
            return None
        return User(
            UserID(row.user_id), row.password_hash, row.is_admin, row.deactivated, row.created_ts
        )

    async def guests_among(self, user_ids: list[str]) -> set[str]:
        """Which of these users are guest accounts (not upgraded)."""
        if not user_ids:
            return set()
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(users.c.user_id).where(
                        users.c.user_id.in_(user_ids), users.c.is_guest.is_(True)
                    )
                )
            ).all()
        return {r.user_id for r in rows}

    async def get_user_case_insensitive(self, user_id: UserID) -> User | None:
        """Login accepts any case of an existing ID (user IDs were once case-sensitive)."""
        user = await self.get_user(user_id)
        if user is not None:
            return user
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(users).where(sa.func.lower(users.c.user_id) == user_id.lower())
                )
            ).all()
        if len(rows) != 1:
            return None
        row = rows[0]
        return User(
            UserID(row.user_id), row.password_hash, row.is_admin, row.deactivated, row.created_ts
        )

    async def user_exists_ignoring_case(self, user_id: UserID) -> bool:
        """Whether this ID or another case of it is taken (new IDs must not be confusable)."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(users.c.user_id)
                    .where(sa.func.lower(users.c.user_id) == user_id.lower())
                    .limit(1)
                )
            ).first()
        return row is not None

    async def is_locked(self, user_id: UserID) -> bool:
        """Whether an administrator locked the account (homeserver/storage/admin.py)."""
        async with self._db.read() as conn:
            found = (
                await conn.execute(
                    sa.select(user_moderation.c.locked).where(user_moderation.c.user_id == user_id)
                )
            ).scalar()
        return bool(found)

    async def get_acting_user(self, user_id: UserID) -> ActingUser | None:
        """What an application service acting as this user needs: whether the account
        exists and is active, and an administrator's flags on it (as a token of its own
        carries them)."""
        query = (
            sa.select(
                users.c.deactivated,
                user_moderation.c.shadow_banned,
                user_moderation.c.suspended,
                user_moderation.c.locked,
            )
            .outerjoin(user_moderation, user_moderation.c.user_id == users.c.user_id)
            .where(users.c.user_id == user_id)
        )
        async with self._db.read() as conn:
            r = (await conn.execute(query)).first()
        if r is None:
            return None
        return ActingUser(
            bool(r.deactivated), bool(r.shadow_banned), bool(r.suspended), bool(r.locked)
        )

    async def set_password_hash(self, user_id: UserID, password_hash: str | None) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(users)
                .where(users.c.user_id == user_id)
                .values(password_hash=password_hash)
            )

    async def set_deactivated(self, user_id: UserID) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(users)
                .where(users.c.user_id == user_id)
                .values(deactivated=True, password_hash=None)
            )

    # --- profiles --------------------------------------------------------------------------

    async def get_profile(self, user_id: UserID) -> Profile | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(sa.select(profiles).where(profiles.c.user_id == user_id))
            ).first()
        return None if row is None else Profile(row.displayname, row.avatar_url)

    async def set_profile_field(self, user_id: UserID, field: str, value: str | None) -> Profile:
        """Set ``displayname`` or ``avatar_url``; returns the whole profile as it now is."""
        if field not in ("displayname", "avatar_url"):
            raise ValueError(f"not a profile column: {field}")
        async with self._db.write() as conn:
            await conn.execute(
                self._db.upsert(profiles, {"user_id": user_id, field: value}, keys=("user_id",))
            )
            row = (
                await conn.execute(sa.select(profiles).where(profiles.c.user_id == user_id))
            ).one()
        return Profile(row.displayname, row.avatar_url)

    # --- devices ---------------------------------------------------------------------------

    async def upsert_device(
        self,
        user_id: UserID,
        device_id: str,
        display_name: str | None,
        now_ms: int,
        ip: str | None = None,
    ) -> None:
        """Create the device; an existing one keeps its display name unless one is given."""
        async with self._db.write() as conn:
            row = {
                "user_id": user_id,
                "device_id": device_id,
                "display_name": display_name,
                "created_ts": now_ms,
                "last_seen_ts": now_ms,
                "last_seen_ip": ip,
            }
            update = ["last_seen_ts"] + (["display_name"] if display_name is not None else [])
            update += ["last_seen_ip"] if ip is not None else []
            await conn.execute(
                self._db.upsert(devices, row, keys=("user_id", "device_id"), update=update)
            )

    async def get_devices(self, user_id: UserID) -> list[Device]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(devices)
                    .where(devices.c.user_id == user_id)
                    .order_by(devices.c.device_id)
                )
            ).all()
        return [
            Device(UserID(r.user_id), r.device_id, r.display_name, r.last_seen_ts, r.last_seen_ip)
            for r in rows
        ]

    async def get_device(self, user_id: UserID, device_id: str) -> Device | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(devices).where(
                        devices.c.user_id == user_id, devices.c.device_id == device_id
                    )
                )
            ).first()
        if r is None:
            return None
        return Device(
            UserID(r.user_id), r.device_id, r.display_name, r.last_seen_ts, r.last_seen_ip
        )

    async def set_device_display_name(
        self, user_id: UserID, device_id: str, display_name: str | None
    ) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(devices)
                .where(devices.c.user_id == user_id, devices.c.device_id == device_id)
                .values(display_name=display_name)
            )
        return result.rowcount > 0

    async def update_last_seen(
        self, user_id: UserID, device_id: str, now_ms: int, ip: str | None
    ) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(devices)
                .where(devices.c.user_id == user_id, devices.c.device_id == device_id)
                .values(last_seen_ts=now_ms, last_seen_ip=ip)
            )

    async def delete_devices(self, user_id: UserID, device_ids: list[str]) -> list[bytes]:
        """Delete devices with their tokens; returns the deleted access-token hashes."""
        async with self._db.write() as conn:
            hashes = [
                r.token_hash
                for r in (
                    await conn.execute(
                        sa.select(access_tokens.c.token_hash).where(
                            access_tokens.c.user_id == user_id,
                            access_tokens.c.device_id.in_(device_ids),
                        )
                    )
                ).all()
            ]
            for table in (access_tokens, refresh_tokens, devices):
                await conn.execute(
                    sa.delete(table).where(
                        table.c.user_id == user_id, table.c.device_id.in_(device_ids)
                    )
                )
        return hashes

    async def delete_devices_except(
        self, user_id: UserID, keep_device: str | None
    ) -> tuple[list[str], list[bytes]]:
        """Delete every device but ``keep_device`` with its tokens, in one transaction.

        Returns the deleted device IDs and access-token hashes.
        """
        async with self._db.write() as conn:
            device_query = sa.select(devices.c.device_id).where(devices.c.user_id == user_id)
            token_query = sa.select(access_tokens.c.token_hash).where(
                access_tokens.c.user_id == user_id
            )
            if keep_device is not None:
                device_query = device_query.where(devices.c.device_id != keep_device)
                token_query = token_query.where(access_tokens.c.device_id != keep_device)
            device_ids = [r.device_id for r in (await conn.execute(device_query)).all()]
            hashes = [bytes(r.token_hash) for r in (await conn.execute(token_query)).all()]
            for table in (access_tokens, refresh_tokens, devices):
                stmt = sa.delete(table).where(table.c.user_id == user_id)
                if keep_device is not None:
                    stmt = stmt.where(table.c.device_id != keep_device)
                await conn.execute(stmt)
        return device_ids, hashes

    async def delete_device_tokens(self, user_id: UserID, device_id: str) -> list[bytes]:
        """Revoke the access and refresh tokens of one device, keeping the device."""
        async with self._db.write() as conn:
            hashes = [
                bytes(r.token_hash)
                for r in (
                    await conn.execute(
                        sa.delete(access_tokens)
                        .where(
                            access_tokens.c.user_id == user_id,
                            access_tokens.c.device_id == device_id,
                        )
                        .returning(access_tokens.c.token_hash)
                    )
                ).all()
            ]
            await conn.execute(
                sa.delete(refresh_tokens).where(
                    refresh_tokens.c.user_id == user_id, refresh_tokens.c.device_id == device_id
                )
            )
        return hashes

    # --- tokens ----------------------------------------------------------------------------

    async def add_access_token(
        self,
        user_id: UserID,
        device_id: str,
        token_hash: bytes,
        now_ms: int,
        valid_until_ms: int | None,
        refresh_token_id: int | None,
    ) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.insert(access_tokens)
                .values(
                    token_hash=token_hash,
                    user_id=user_id,
                    device_id=device_id,
                    created_ts=now_ms,
                    valid_until_ms=valid_until_ms,
                    refresh_token_id=refresh_token_id,
                )
                .returning(access_tokens.c.id)
            )
            return int(result.scalar_one())

    async def add_refresh_token(
        self,
        user_id: UserID,
        device_id: str,
        token_hash: bytes,
        now_ms: int,
        oauth_client_id: str | None = None,
    ) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.insert(refresh_tokens)
                .values(
                    token_hash=token_hash,
                    user_id=user_id,
                    device_id=device_id,
                    created_ts=now_ms,
                    oauth_client_id=oauth_client_id,
                )
                .returning(refresh_tokens.c.id)
            )
            return int(result.scalar_one())

    async def upgrade_guest(self, user_id: UserID, password_hash: str) -> bool:
        """A guest account becomes a full one with this password; False if it is no guest."""
        result = await self._db.write_alone(
            sa.update(users)
            .where(users.c.user_id == user_id, users.c.is_guest.is_(True))
            .values(is_guest=False, password_hash=password_hash)
        )
        return bool(result.rowcount)

    async def get_token(self, token_hash: bytes) -> TokenInfo | None:
        query = (
            sa.select(
                access_tokens.c.id,
                access_tokens.c.user_id,
                access_tokens.c.device_id,
                access_tokens.c.valid_until_ms,
                users.c.is_admin,
                users.c.deactivated,
                user_moderation.c.shadow_banned,
                user_moderation.c.suspended,
                user_moderation.c.locked,
                users.c.is_guest,
            )
            .join(users, users.c.user_id == access_tokens.c.user_id)
            .outerjoin(user_moderation, user_moderation.c.user_id == access_tokens.c.user_id)
            .where(access_tokens.c.token_hash == token_hash)
        )
        async with self._db.read() as conn:
            r = (await conn.execute(query)).first()
        if r is None:
            return None
        return TokenInfo(
            r.id,
            UserID(r.user_id),
            r.device_id,
            r.valid_until_ms,
            r.is_admin,
            r.deactivated,
            bool(r.shadow_banned),
            bool(r.suspended),
            bool(r.locked),
            bool(r.is_guest),
        )

    async def oauth_client_of_device(self, user_id: UserID, device_id: str) -> str | None:
        """The OAuth client a device's session was granted to (None: not an OAuth one)."""
        async with self._db.read() as conn:
            value = (
                await conn.execute(
                    sa.select(refresh_tokens.c.oauth_client_id)
                    .where(
                        refresh_tokens.c.user_id == user_id,
                        refresh_tokens.c.device_id == device_id,
                        refresh_tokens.c.next_token_id.is_(None),
                    )
                    .limit(1)
                )
            ).scalar_one_or_none()
        return None if value is None else str(value)

    async def get_refresh_token(self, token_hash: bytes) -> RefreshTokenInfo | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash)
                )
            ).first()
        if r is None:
            return None
        return RefreshTokenInfo(
            r.id, UserID(r.user_id), r.device_id, r.next_token_id, r.oauth_client_id
        )

    async def replace_refresh_token(
        self,
        old_id: int,
        user_id: UserID,
        device_id: str,
        new_refresh_hash: bytes,
        new_access_hash: bytes,
        now_ms: int,
        valid_until_ms: int,
        oauth_client_id: str | None = None,
    ) -> bool:
        """Exchange a refresh token once: new refresh and access tokens, old ones revoked;
        the new refresh token belongs to the same OAuth client (``oauth_client_id``).

        False when the old token was already exchanged (a replayed refresh token).
        """
        try:
            async with self._db.write() as conn:
                new_id = int(
                    (
                        await conn.execute(
                            sa.insert(refresh_tokens)
                            .values(
                                token_hash=new_refresh_hash,
                                user_id=user_id,
                                device_id=device_id,
                                created_ts=now_ms,
                                oauth_client_id=oauth_client_id,
                            )
                            .returning(refresh_tokens.c.id)
                        )
                    ).scalar_one()
                )
                claimed = await conn.execute(
                    sa.update(refresh_tokens)
                    .where(refresh_tokens.c.id == old_id, refresh_tokens.c.next_token_id.is_(None))
                    .values(next_token_id=new_id)
                )
                if claimed.rowcount == 0:
                    raise _AlreadyExchanged  # rolls the new token back
                await self._swap_access_token(
                    conn,
                    old_id,
                    new_id,
                    user_id,
                    device_id,
                    new_access_hash,
                    now_ms,
                    valid_until_ms,
                )
        except _AlreadyExchanged:
            return False
        return True

    async def _swap_access_token(
        self,
        conn: Connection,
        old_id: int,
        new_id: int,
        user_id: UserID,
        device_id: str,
        new_access_hash: bytes,
        now_ms: int,
        valid_until_ms: int,
    ) -> None:
        await conn.execute(
            sa.delete(access_tokens).where(access_tokens.c.refresh_token_id == old_id)
        )
        await conn.execute(
            sa.insert(access_tokens).values(
                token_hash=new_access_hash,
                user_id=user_id,
                device_id=device_id,
                created_ts=now_ms,
                valid_until_ms=valid_until_ms,
                refresh_token_id=new_id,
            )
        )

    async def delete_access_token(self, token_id: int) -> bytes | None:
        async with self._db.write() as conn:
            r = (
                await conn.execute(
                    sa.delete(access_tokens)
                    .where(access_tokens.c.id == token_id)
                    .returning(access_tokens.c.token_hash, access_tokens.c.refresh_token_id)
                )
            ).first()
            if r is None:
                return None
            if r.refresh_token_id is not None:
                await conn.execute(
                    sa.delete(refresh_tokens).where(refresh_tokens.c.id == r.refresh_token_id)
                )
        return bytes(r.token_hash)

    async def get_token_hashes(
        self, user_id: UserID, except_device: str | None = None
    ) -> list[bytes]:
        query = sa.select(access_tokens.c.token_hash).where(access_tokens.c.user_id == user_id)
        if except_device is not None:
            query = query.where(access_tokens.c.device_id != except_device)
        async with self._db.read() as conn:
            return [bytes(r.token_hash) for r in (await conn.execute(query)).all()]
