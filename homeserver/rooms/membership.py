"""Joining, inviting, leaving, kicking, banning and forgetting rooms."""

from __future__ import annotations

from typing import Protocol

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.sender import EventSender, SentEvent
from homeserver.storage.accounts import Profile
from homeserver.storage.rooms import RoomStore


class Profiles(Protocol):
    """The profiles of local users (the account store): None for an unknown user."""

    async def get_profile(self, user_id: UserID) -> Profile | None: ...


class RoomBlocks(Protocol):
    """Rooms the server's administrators blocked: nobody of this server may join them."""

    async def is_room_blocked(self, room_id: str) -> bool: ...


class InvitePermissions(Protocol):
    """Whether a user refuses invites (spec v1.18, "Invite permission": the
    ``m.invite_permission_config`` account data)."""

    async def blocks_invites(self, user_id: UserID) -> bool: ...


class MembershipService:
    def __init__(
        self,
        sender: EventSender,
        rooms: RoomStore,
        server_name: str,
        profiles: Profiles,
        invite_permissions: InvitePermissions | None = None,
        blocks: RoomBlocks | None = None,
    ) -> None:
        self._blocks = blocks
        self._invite_permissions = invite_permissions
        self._sender = sender
        self._rooms = rooms
        self._server_name = server_name
        self._profiles = profiles

    async def check_invitable(self, user_id: UserID) -> None:
        if user_id.server_name != self._server_name:
            raise MatrixError(
                Codes.FORBIDDEN,
                "Inviting users of other servers needs federation, which this "
                "server does not run yet",
            )
        if await self._profiles.get_profile(user_id) is None:
            # 400: createRoom and /invite document no 404 ("the request is invalid").
            raise MatrixError(Codes.INVALID_PARAM, f"Unknown user {user_id}")

    async def _member_content(
        self, user_id: str, membership: str, reason: str | None, **extra: object
    ) -> JsonDict:
        content: JsonDict = {"membership": membership}
        if membership in ("join", "invite", "knock"):
            profile = await self._profiles.get_profile(UserID(user_id))
            if profile is not None:
                displayname, avatar_url = profile.displayname, profile.avatar_url
                if displayname is not None:
                    content["displayname"] = displayname
                if avatar_url is not None:
                    content["avatar_url"] = avatar_url
        if reason is not None:
            content["reason"] = reason
        content.update({k: v for k, v in extra.items() if v is not None})
        return content

    async def _check_not_blocked(self, room_id: str) -> None:
        if self._blocks is not None and await self._blocks.is_room_blocked(room_id):
            raise MatrixError(Codes.FORBIDDEN, "This room has been blocked on this server")

    async def _require_room(self, room_id: str) -> None:
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")

    async def send_own_membership(
        self, room_id: RoomID, user_id: UserID, membership: str, reason: str | None = None
    ) -> SentEvent:
        content = await self._member_content(user_id, membership, reason)
        return await self._sender.send(
            room_id, user_id, "m.room.member", content, state_key=user_id
        )

    async def join(
        self, requester: Requester, room_id: RoomID, reason: str | None = None
    ) -> SentEvent:
        requester.check_not_suspended()
        await self._check_not_blocked(room_id)
        await self._require_room(room_id)
        return await self.send_own_membership(room_id, requester.user_id, "join", reason)

    async def knock(
        self, requester: Requester, room_id: RoomID, reason: str | None = None
    ) -> SentEvent:
        """The auth rules decide: a `knock` or `knock_restricted` join rule, and the user
        neither joined, invited nor banned (spec: "Knocking on rooms")."""
        requester.check_not_suspended()
        await self._check_not_blocked(room_id)
        await self._require_room(room_id)
        return await self.send_own_membership(room_id, requester.user_id, "knock", reason)

    async def invite(
        self,
        requester: Requester,
        room_id: RoomID,
        target: UserID,
        *,
        reason: str | None = None,
        is_direct: bool = False,
    ) -> SentEvent | None:
        """None: the inviter is shadow-banned, and the invite, which looks sent, is not."""
        requester.check_not_suspended()
        await self._require_room(room_id)
        await self.check_invitable(target)
        if self._invite_permissions is not None and await self._invite_permissions.blocks_invites(
            target
        ):
            raise MatrixError(Codes.INVITE_BLOCKED, f"{target} does not accept invites")
        current = await self._rooms.get_membership(room_id, target)
        if current is not None and current.membership in ("join", "ban"):
            raise MatrixError(
                Codes.FORBIDDEN,
                f"{target} is already {current.membership}ed"
                if current.membership == "join"
                else f"{target} is banned",
            )
        if requester.shadow_banned:
            return None
        content = await self._member_content(
            target, "invite", reason, is_direct=True if is_direct else None
        )
        return await self._sender.send(
            room_id, requester.user_id, "m.room.member", content, state_key=target
        )

    async def leave(
        self, requester: Requester, room_id: RoomID, reason: str | None = None
    ) -> SentEvent | None:
        await self._require_room(room_id)
        current = await self._rooms.get_membership(room_id, requester.user_id)
        if current is None or current.membership in ("leave", "ban"):
            if current is not None and current.membership == "leave":
                return None  # already gone: leaving is idempotent, as clients expect
            raise MatrixError(Codes.FORBIDDEN, "You are not in this room")
        return await self.send_own_membership(room_id, requester.user_id, "leave", reason)

    async def set_membership_of(
        self,
        requester: Requester,
        room_id: RoomID,
        target: UserID,
        membership: str,
        reason: str | None,
    ) -> SentEvent:
        """kick (leave), ban and unban (leave) of another user, checked by the auth rules."""
        await self._require_room(room_id)
        current = await self._rooms.get_membership(room_id, target)
        # spec, kick: "the kickee is not currently in the room" is a 403; a kick also revokes
        # an invite or refuses a knock, but never lifts a ban (that is /unban).
        if membership == "leave" and (
            current is None or current.membership not in ("join", "invite", "knock")
        ):
            raise MatrixError(Codes.FORBIDDEN, f"{target} is not in this room")
        content = await self._member_content(target, membership, reason)
        return await self._sender.send(
            room_id, requester.user_id, "m.room.member", content, state_key=target
        )

    async def unban(
        self, requester: Requester, room_id: RoomID, target: UserID, reason: str | None
    ) -> SentEvent:
        await self._require_room(room_id)
        current = await self._rooms.get_membership(room_id, target)
        if current is None or current.membership != "ban":
            raise MatrixError(Codes.FORBIDDEN, f"{target} is not banned")
        content = await self._member_content(target, "leave", reason)
        return await self._sender.send(
            room_id, requester.user_id, "m.room.member", content, state_key=target
        )

    async def forget(self, requester: Requester, room_id: RoomID) -> None:
        current = await self._rooms.get_membership(room_id, requester.user_id)
        if current is None:
            raise MatrixError(Codes.NOT_FOUND, "You have never been in this room")
        if current.membership in ("join", "invite", "knock"):
            raise MatrixError(Codes.UNKNOWN, "Leave the room before forgetting it", status=400)
        await self._rooms.set_forgotten(room_id, requester.user_id)

    async def joined_rooms(self, requester: Requester) -> list[str]:
        return sorted(
            m.room_id for m in await self._rooms.get_user_memberships(requester.user_id, ["join"])
        )

    async def update_profile_everywhere(self, user_id: UserID) -> None:
        """Send a fresh join event into every joined room after a profile change."""
        for m in await self._rooms.get_user_memberships(user_id, ["join"]):
            try:
                await self.send_own_membership(RoomID(m.room_id), user_id, "join")
            except MatrixError:
                continue  # e.g. the user lost the right to join since: the profile stays old

    async def deactivate_user(self, user_id: UserID) -> None:
        """A deactivated user leaves every room and declines every invite."""
        for m in await self._rooms.get_user_memberships(user_id, ["join", "invite", "knock"]):
            try:
                await self.send_own_membership(RoomID(m.room_id), user_id, "leave")
            except MatrixError:
                continue  # already unable to leave (e.g. the room was left meanwhile)
