"""The admin API on accounts (Synapse's ``/_synapse/admin/.../users``, issue 22): list, query,
create or modify, deactivate, passwords, devices, sessions, shadow-ban, suspension, locking,
rate-limit overrides, logging in as a user.

Every method takes the requester and refuses anyone but a server administrator first.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from homeserver.accounts.profile import (
    MAX_AVATAR_URL_CHARS,
    MAX_DISPLAYNAME_CHARS,
    ProfileService,
    is_valid_mxc_uri,
)
from homeserver.accounts.service import AccountService
from homeserver.accounts.tokens import AuthService, new_device_id
from homeserver.core.clock import Clock
from homeserver.core.config import RateLimit
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID, is_valid_new_localpart
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.core.types import JsonDict, Requester
from homeserver.push.pushers import PusherService
from homeserver.storage.accounts import AccountStore, Device
from homeserver.storage.admin import AdminStore, UserQuery, UserRecord
from homeserver.storage.rooms import RoomStore
from homeserver.storage.threepids import ThreepidStore

logger = logging.getLogger(__name__)

USER_TYPES = ("bot", "support")
# How often each worker reads the rate-limit overrides again (another worker's change
# reaches it within this time; the worker that made it applies it at once).
OVERRIDES_REFRESH_S = 60.0
# The device ID of a token an administrator made to act as a user: no device is created
# (as Synapse: the user does not see it among their devices).
PUPPET_DEVICE_PREFIX = "ADMIN_"


def require_admin(requester: Requester) -> None:
    if not requester.is_admin:
        raise MatrixError(Codes.FORBIDDEN, "You are not a server admin")


@dataclass(frozen=True, slots=True)
class UserChanges:
    """The body of PUT /_synapse/admin/v2/users/{userId}; ``None`` leaves a field as it is
    (``user_type`` is cleared by ``clear_user_type``)."""

    password: str | None = None
    logout_devices: bool = True
    displayname: str | None = None
    avatar_url: str | None = None
    threepids: tuple[tuple[str, str], ...] | None = None
    admin: bool | None = None
    deactivated: bool | None = None
    locked: bool | None = None
    user_type: str | None = None
    clear_user_type: bool = False


def user_json(user: UserRecord) -> JsonDict:
    """An account as the list shows it (Synapse's field names)."""
    return {
        "name": user.user_id,
        "is_guest": False,
        "admin": user.is_admin,
        "user_type": user.moderation.user_type,
        "deactivated": user.deactivated,
        "erased": user.moderation.erased,
        "shadow_banned": user.moderation.shadow_banned,
        "displayname": user.displayname,
        "avatar_url": user.avatar_url,
        "creation_ts": user.created_ts,
        "last_seen_ts": user.last_seen_ts,
        "locked": user.moderation.locked,
        "suspended": user.moderation.suspended,
        "approved": True,
    }


def device_json(device: Device, user_agent: str | None) -> JsonDict:
    out: JsonDict = {
        "device_id": device.device_id,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_ts": device.last_seen_ts,
        "last_seen_user_agent": user_agent,
        "user_id": device.user_id,
        "dehydrated": False,
    }
    if device.display_name is not None:
        out["display_name"] = device.display_name
    return out


class AdminUsers:
    def __init__(
        self,
        store: AdminStore,
        accounts: AccountService,
        account_store: AccountStore,
        auth: AuthService,
        profiles: ProfileService,
        threepids: ThreepidStore,
        rooms: RoomStore,
        ratelimiter: RateLimiter,
        clock: Clock,
        server_name: str,
        pushers: PusherService,
    ) -> None:
        self._pushers = pushers
        self._store = store
        self._accounts = accounts
        self._account_store = account_store
        self._auth = auth
        self._profiles = profiles
        self._threepids = threepids
        self._rooms = rooms
        self._ratelimiter = ratelimiter
        self._clock = clock
        self._server_name = server_name

    # --- looking up --------------------------------------------------------------------------

    def local_user(self, raw: str) -> UserID:
        """``raw`` as a user ID of this server: 400 otherwise."""
        try:
            user_id = UserID.parse(raw)
        except ValueError:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid user ID: {raw}") from None
        if user_id.server_name != self._server_name:
            raise MatrixError(Codes.INVALID_PARAM, "Only local users can be administered")
        return user_id

    async def _existing(self, user_id: UserID) -> UserRecord:
        user = await self._store.get_user(user_id)
        if user is None:
            raise MatrixError(Codes.NOT_FOUND, "User not found")
        return user

    async def list_users(
        self, requester: Requester, query: UserQuery
    ) -> tuple[list[JsonDict], int, int | None]:
        """A page of accounts, how many match in all, and the next page's offset."""
        require_admin(requester)
        found, total = await self._store.list_users(query)
        next_offset = query.offset + len(found)
        return [user_json(u) for u in found], total, next_offset if next_offset < total else None

    async def get_user(self, requester: Requester, user_id: UserID) -> JsonDict:
        require_admin(requester)
        return await self._details(user_id)

    async def _details(self, user_id: UserID) -> JsonDict:
        user = await self._existing(user_id)
        out = user_json(user)
        out["threepids"] = [
            {
                "medium": t.medium,
                "address": t.address,
                "added_at": t.added_at,
                "validated_at": t.validated_at,
            }
            for t in await self._threepids.get_threepids(user_id)
        ]
        out.update(
            appservice_id=None,
            consent_server_notice_sent=None,
            consent_version=None,
            consent_ts=None,
            external_ids=[],
        )
        return out

    # --- creating and changing ---------------------------------------------------------------

    async def put_user(
        self, requester: Requester, user_id: UserID, changes: UserChanges
    ) -> tuple[bool, JsonDict]:
        """Create the account or change it; True when it was created."""
        require_admin(requester)
        self._check_changes(changes)
        user = await self._store.get_user(user_id)
        created = user is None
        if user is None:
            if not is_valid_new_localpart(user_id.localpart):
                raise MatrixError(Codes.INVALID_USERNAME, "Not a valid user ID for this server")
            if changes.deactivated:
                raise MatrixError(Codes.INVALID_PARAM, "A new account cannot be deactivated")
            if not await self._accounts.create_user_as_admin(
                user_id,
                changes.password,
                admin=bool(changes.admin),
                displayname=changes.displayname or None,
            ):
                raise MatrixError(Codes.USER_IN_USE, "User ID already taken (in another case)")
            logger.info(
                "account created by an administrator",
                extra={"user_id": user_id, "admin": requester.user_id},
            )
        else:
            await self._change_existing(requester, user, changes)
        await self._apply_common(user_id, changes, created=created)
        await self._auth.forget_user_cache(user_id)
        return created, await self._details(user_id)

    def _check_changes(self, changes: UserChanges) -> None:
        if changes.user_type is not None and changes.user_type not in USER_TYPES:
            raise MatrixError(Codes.INVALID_PARAM, f"user_type must be one of {USER_TYPES}")
        if changes.password is not None:
            self._accounts.check_password_strength(changes.password)
        # Checked before anything changes, so that a refused request creates no account.
        if changes.displayname is not None and len(changes.displayname) > MAX_DISPLAYNAME_CHARS:
            raise MatrixError(
                Codes.INVALID_PARAM,
                f"displayname is longer than {MAX_DISPLAYNAME_CHARS} characters",
            )
        avatar = changes.avatar_url
        if avatar and (len(avatar) > MAX_AVATAR_URL_CHARS or not is_valid_mxc_uri(avatar)):
            raise MatrixError(Codes.INVALID_PARAM, "avatar_url must be an mxc:// URI")
        for medium, _ in changes.threepids or ():
            if medium != "email":
                raise MatrixError(Codes.INVALID_PARAM, "Only e-mail addresses are supported")

    async def _change_existing(
        self, requester: Requester, user: UserRecord, changes: UserChanges
    ) -> None:
        user_id = user.user_id
        if changes.admin is not None and changes.admin != user.is_admin:
            if user_id == requester.user_id and not changes.admin:
                raise MatrixError(Codes.FORBIDDEN, "You may not demote yourself")
            await self._store.set_admin(user_id, changes.admin)
        if changes.deactivated is True and not user.deactivated:
            await self._accounts.deactivate_as_admin(user_id)
        elif changes.deactivated is False and user.deactivated:
            if changes.password is None:
                # As Synapse: the password was wiped on deactivation, and an account
                # nobody can log in to is of no use active.
                raise MatrixError(
                    Codes.MISSING_PARAM, "A password is needed to reactivate an account"
                )
            await self._store.reactivate(user_id)
        if changes.password is not None:
            await self._accounts.set_password_as_admin(
                user_id, changes.password, logout_devices=changes.logout_devices
            )

    async def _apply_common(self, user_id: UserID, changes: UserChanges, *, created: bool) -> None:
        as_user = Requester(user_id, "", 0)
        if changes.displayname is not None and not created:
            await self._profiles.set_field(as_user, user_id, "displayname", changes.displayname)
        if changes.avatar_url is not None:
            await self._profiles.set_field(as_user, user_id, "avatar_url", changes.avatar_url)
        if changes.threepids is not None:
            taken = await self._store.replace_threepids(
                user_id, changes.threepids, self._clock.now_ms()
            )
            if taken:
                raise MatrixError(
                    Codes.THREEPID_IN_USE,
                    f"Held by another account: {', '.join(a for _, a in taken)}",
                )
        moderation: dict[str, object] = {}
        if changes.locked is not None:
            moderation["locked"] = changes.locked
        if changes.user_type is not None or changes.clear_user_type:
            moderation["user_type"] = changes.user_type
        if moderation:
            await self._store.set_moderation(user_id, **moderation)

    async def deactivate(self, requester: Requester, user_id: UserID, *, erase: bool) -> None:
        """Deactivate the account; ``erase`` also removes its display name and avatar."""
        require_admin(requester)
        user = await self._existing(user_id)
        if not user.deactivated:
            await self._accounts.deactivate_as_admin(user_id)
        if erase:
            await self._account_store.set_profile_field(user_id, "displayname", None)
            await self._account_store.set_profile_field(user_id, "avatar_url", None)
            await self._store.set_moderation(user_id, erased=True)
        await self._auth.forget_user_cache(user_id)

    async def reset_password(
        self, requester: Requester, user_id: UserID, new_password: str, *, logout_devices: bool
    ) -> None:
        require_admin(requester)
        user = await self._existing(user_id)
        if user.deactivated:
            raise MatrixError(Codes.FORBIDDEN, "The account is deactivated")
        await self._accounts.set_password_as_admin(
            user_id, new_password, logout_devices=logout_devices
        )

    # --- flags -------------------------------------------------------------------------------

    async def set_flag(self, requester: Requester, user_id: UserID, flag: str, on: bool) -> None:
        """``shadow_banned``, ``suspended`` or ``locked``; tokens carry them, so this
        worker's cached tokens of the user are read again."""
        require_admin(requester)
        await self._existing(user_id)
        if flag != "shadow_banned" and on and user_id == requester.user_id:
            raise MatrixError(Codes.FORBIDDEN, f"You may not set {flag} on yourself")
        await self._store.set_moderation(user_id, **{flag: on})
        await self._auth.forget_user_cache(user_id)
        logger.info(
            "account flag set by an administrator",
            extra={"user_id": user_id, "flag": flag, "on": on, "admin": requester.user_id},
        )

    async def get_flag(self, requester: Requester, user_id: UserID, flag: str) -> bool:
        require_admin(requester)
        await self._existing(user_id)
        return bool(getattr(await self._store.get_moderation(user_id), flag))

    # --- devices and sessions ----------------------------------------------------------------

    async def devices(self, requester: Requester, user_id: UserID) -> list[JsonDict]:
        require_admin(requester)
        await self._existing(user_id)
        agents = await self._store.last_user_agents(user_id)
        return [
            device_json(d, agents.get(d.device_id))
            for d in await self._account_store.get_devices(user_id)
        ]

    async def device(self, requester: Requester, user_id: UserID, device_id: str) -> JsonDict:
        require_admin(requester)
        await self._existing(user_id)
        device = await self._account_store.get_device(user_id, device_id)
        if device is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown device")
        agents = await self._store.last_user_agents(user_id)
        return device_json(device, agents.get(device_id))

    async def create_device(self, requester: Requester, user_id: UserID, device_id: str) -> None:
        require_admin(requester)
        await self._existing(user_id)
        await self._accounts.create_device_as_admin(user_id, device_id)

    async def update_device(
        self, requester: Requester, user_id: UserID, device_id: str, display_name: str | None
    ) -> None:
        require_admin(requester)
        await self._existing(user_id)
        await self._accounts.update_device_as_admin(user_id, device_id, display_name)

    async def delete_devices(
        self, requester: Requester, user_id: UserID, device_ids: list[str]
    ) -> None:
        require_admin(requester)
        await self._existing(user_id)
        await self._accounts.delete_devices_as_admin(user_id, device_ids)
        await self._store.delete_connections(user_id, device_ids)

    async def whois(self, requester: Requester, user_id: UserID) -> JsonDict:
        """Where the user's sessions were seen from (Synapse groups them under one device
        ``""``; so do we, one session per device)."""
        require_admin(requester)
        await self._existing(user_id)
        sessions: dict[str, list[JsonDict]] = {}
        for c in await self._store.get_connections(user_id):
            sessions.setdefault(c.device_id, []).append(
                {"ip": c.ip, "last_seen": c.last_seen, "user_agent": c.user_agent}
            )
        return {
            "user_id": user_id,
            "devices": {"": {"sessions": [{"connections": found} for found in sessions.values()]}},
        }

    async def login_as(
        self, requester: Requester, user_id: UserID, valid_until_ms: int | None
    ) -> str:
        """An access token of the user's (no device of theirs is created or changed)."""
        require_admin(requester)
        if user_id == requester.user_id:
            raise MatrixError(Codes.INVALID_PARAM, "Cannot use the admin API to log in as self")
        user = await self._existing(user_id)
        if user.deactivated:
            raise MatrixError(Codes.FORBIDDEN, "The account is deactivated")
        if valid_until_ms is not None and valid_until_ms <= self._clock.now_ms():
            raise MatrixError(Codes.INVALID_PARAM, "valid_until_ms is in the past")
        token = await self._auth.create_token(
            user_id, PUPPET_DEVICE_PREFIX + new_device_id(), valid_until_ms
        )
        logger.info(
            "administrator logged in as a user",
            extra={"user_id": user_id, "admin": requester.user_id},
        )
        return token

    # --- rooms, account data, names -----------------------------------------------------------

    async def joined_rooms(self, requester: Requester, user_id: UserID) -> list[str]:
        require_admin(requester)
        return sorted(m.room_id for m in await self._rooms.get_user_memberships(user_id, ["join"]))

    async def memberships(self, requester: Requester, user_id: UserID) -> dict[str, str]:
        """Every room the server knows the user in, with their membership (left ones too)."""
        require_admin(requester)
        found = await self._rooms.get_user_memberships(user_id)
        return {m.room_id: m.membership for m in sorted(found, key=lambda m: m.room_id)}

    async def pushers(self, requester: Requester, user_id: UserID) -> list[JsonDict]:
        require_admin(requester)
        await self._existing(user_id)
        return await self._pushers.get_pushers(Requester(user_id, "", 0))

    async def is_admin(self, requester: Requester, user_id: UserID) -> bool:
        require_admin(requester)
        return (await self._existing(user_id)).is_admin

    async def set_admin(self, requester: Requester, user_id: UserID, admin: bool) -> None:
        require_admin(requester)
        await self._existing(user_id)
        if user_id == requester.user_id and not admin:
            raise MatrixError(Codes.FORBIDDEN, "You may not demote yourself")
        await self._store.set_admin(user_id, admin)
        await self._auth.forget_user_cache(user_id)

    async def user_of_threepid(self, requester: Requester, medium: str, address: str) -> str:
        require_admin(requester)
        owner = await self._threepids.get_owner(medium, address.lower())
        if owner is None:
            raise MatrixError(Codes.NOT_FOUND, "User not found")
        return owner

    async def account_data(self, requester: Requester, user_id: UserID) -> JsonDict:
        require_admin(requester)
        await self._existing(user_id)
        global_data, rooms = await self._store.get_account_data(user_id)
        return {"account_data": {"global": global_data, "rooms": rooms}}

    async def username_available(self, requester: Requester, username: str) -> None:
        """Nothing if ``username`` could be registered; ``M_USER_IN_USE`` and such
        otherwise (even with registration closed)."""
        require_admin(requester)
        await self._accounts.check_username_available(username, None)

    # --- rate-limit overrides ----------------------------------------------------------------

    async def get_ratelimit(self, requester: Requester, user_id: UserID) -> JsonDict:
        require_admin(requester)
        await self._existing(user_id)
        found = await self._store.get_ratelimit_override(user_id)
        if found is None:
            return {}
        return {"messages_per_second": found[0], "burst_count": found[1]}

    async def set_ratelimit(
        self, requester: Requester, user_id: UserID, per_second: int, burst: int
    ) -> JsonDict:
        require_admin(requester)
        await self._existing(user_id)
        await self._store.set_ratelimit_override(user_id, per_second, burst)
        await self.load_overrides()
        return {"messages_per_second": per_second, "burst_count": burst}

    async def delete_ratelimit(self, requester: Requester, user_id: UserID) -> None:
        require_admin(requester)
        await self._existing(user_id)
        await self._store.delete_ratelimit_override(user_id)
        await self.load_overrides()

    async def load_overrides(self) -> None:
        overrides: dict[str, RateLimit | None] = {}
        for user_id, (per_second, burst) in (await self._store.get_ratelimit_overrides()).items():
            # As Synapse: 0 messages a second means not limited.
            overrides[user_id] = (
                None if per_second == 0 else RateLimit(per_second=per_second, burst=max(1, burst))
            )
        self._ratelimiter.set_overrides(Action.MESSAGE, overrides)

    async def run_overrides_refresh(self) -> None:
        """Background job: overrides set through another worker reach this one."""
        while True:
            await self.load_overrides()
            await asyncio.sleep(OVERRIDES_REFRESH_S)
