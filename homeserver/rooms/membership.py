"""Joining, inviting, leaving, kicking, banning and forgetting rooms."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol
from weakref import WeakValueDictionary

import orjson

from homeserver.caches.invalidations import (
    SYNC_MEMBERSHIPS,
    CacheInvalidations,
)
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.events.stripped import STRIPPED_STATE_TYPES
from homeserver.rooms.sender import EventSender, SentEvent
from homeserver.storage.accounts import Profile
from homeserver.storage.events import EventStore
from homeserver.storage.events.federation_reads import FederationReads
from homeserver.storage.rooms import RoomStore

logger = logging.getLogger(__name__)


class Profiles(Protocol):
    """The profiles of local users (the account store): None for an unknown user."""

    async def get_profile(self, user_id: UserID) -> Profile | None: ...


class RemoteRooms(Protocol):
    """Memberships in rooms of other servers (federation's ``RemoteRooms``; None with
    federation off)."""

    async def join(
        self, room_id: str, user_id: str, servers: Sequence[str], content: JsonDict
    ) -> str: ...

    async def reject_invite(self, room_id: str, user_id: str, servers: Sequence[str]) -> str: ...

    async def knock(
        self, room_id: str, user_id: str, servers: Sequence[str], content: JsonDict
    ) -> str: ...

    async def invite(
        self, room_id: str, version: str, event: JsonDict, event_id: str, stripped: list[JsonDict]
    ) -> JsonDict: ...


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
        remote: RemoteRooms | None = None,
        events: EventStore | None = None,
        reads: FederationReads | None = None,
        invite_permissions: InvitePermissions | None = None,
        blocks: RoomBlocks | None = None,
        invalidations: CacheInvalidations | None = None,
    ) -> None:
        self._blocks = blocks
        # Forgetting a room drops the memberships every worker keeps for the user's syncs.
        self._invalidations = invalidations
        self._invite_permissions = invite_permissions
        self._sender = sender
        self._rooms = rooms
        self._server_name = server_name
        self._profiles = profiles
        self._remote = remote
        self._events = events
        self._reads = reads
        self._remote_joins: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    async def check_invitable(self, user_id: UserID) -> None:
        if user_id.server_name != self._server_name:
            if self._remote is None:
                raise MatrixError(
                    Codes.FORBIDDEN,
                    "Inviting users of other servers needs federation, which is off",
                )
            return  # their server answers for them (PUT /invite)
        if await self._profiles.get_profile(user_id) is None:
            # 400: createRoom and /invite document no 404 ("the request is invalid").
            raise MatrixError(Codes.INVALID_PARAM, f"Unknown user {user_id}")

    async def _member_content(
        self,
        user_id: str,
        membership: str,
        reason: str | None,
        extra: Mapping[str, object] | None = None,
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
        # Keys a client adds (a /join body's) never change the membership itself.
        content.update(
            {k: v for k, v in (extra or {}).items() if v is not None and k != "membership"}
        )
        return content

    async def _check_not_blocked(self, room_id: str) -> None:
        if self._blocks is not None and await self._blocks.is_room_blocked(room_id):
            raise MatrixError(Codes.FORBIDDEN, "This room has been blocked on this server")

    async def _require_room(self, room_id: str) -> None:
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")

    async def send_own_membership(
        self,
        room_id: RoomID,
        user_id: UserID,
        membership: str,
        reason: str | None = None,
        extra: JsonDict | None = None,
    ) -> SentEvent:
        content = await self._member_content(user_id, membership, reason, extra)
        if membership == "join" and self._events is not None:
            current = await self._events.get_current_state_event(room_id, "m.room.member", user_id)
            if current is not None and current.content == content and current.redacted_by is None:
                # Joined already with this very content: no new event (as Synapse; SyTest).
                return SentEvent(current.event_id, 0)
        return await self._sender.send(
            room_id, user_id, "m.room.member", content, state_key=user_id
        )

    async def join(
        self,
        requester: Requester,
        room_id: RoomID,
        reason: str | None = None,
        servers: Sequence[str] = (),
        extra: JsonDict | None = None,
    ) -> SentEvent:
        """Join a room: here when this server is in it (or it is ours and empty), else
        through one of ``servers`` (the client's ``via``, an alias's servers), the server of
        the room ID and the inviter's. ``extra``: more content for the member event (what
        the client sent beside the spec's keys, as Synapse keeps it)."""
        requester.check_not_suspended()
        extra = member_extra(extra)
        await self._check_not_blocked(room_id)
        if requester.is_guest:
            await self._check_guest_may_join(room_id)
        if self._remote is None or await self._is_resident(room_id):
            await self._require_room(room_id)
            return await self.send_own_membership(room_id, requester.user_id, "join", reason, extra)
        # One remote join per room at a time on this worker: a second user's join waits and
        # then finds this server in the room, and joins here.
        lock = self._remote_joins.get(room_id)
        if lock is None:
            lock = self._remote_joins[room_id] = asyncio.Lock()
        async with lock:
            if await self._is_resident(room_id):
                return await self.send_own_membership(
                    room_id, requester.user_id, "join", reason, extra
                )
            content = await self._member_content(requester.user_id, "join", reason, extra)
            candidates = [*servers, *await self._servers_of(room_id, requester.user_id)]
            event_id = await self._remote.join(room_id, requester.user_id, candidates, content)
        return SentEvent(event_id, 0)

    async def _check_guest_may_join(self, room_id: RoomID) -> None:
        """spec (guest access): guests join only rooms whose m.room.guest_access is
        can_join."""
        found = await self._rooms.get_current_state_contents([room_id], ["m.room.guest_access"])
        raw = found.get(room_id, {}).get("m.room.guest_access")
        content = orjson.loads(raw).get("content", {}) if raw is not None else {}
        if not isinstance(content, dict) or content.get("guest_access") != "can_join":
            raise MatrixError(Codes.GUEST_ACCESS_FORBIDDEN, "Guests may not join this room")

    async def _is_resident(self, room_id: str) -> bool:
        """Whether the room's state here is live: a user of ours is joined, or nobody is
        (a room of ours that everyone left)."""
        room = await self._rooms.get_room(room_id)
        if room is None or room.current_state_group is None:
            return False
        if self._reads is None:
            return True
        if await self._reads.server_has_joined_member(room_id, self._server_name):
            return True
        return not await self._reads.has_joined_member(room_id)

    async def _servers_of(self, room_id: str, user_id: str) -> list[str]:
        """Servers that may know the room: the inviter's, the room ID's (before v12), those
        of the room's stripped state that came with an invite or a knock."""
        found = []
        current = await self._rooms.get_membership(room_id, user_id)
        if current is not None and current.membership == "invite":
            found.append(current.sender.split(":", 1)[1])
        if ":" in room_id:
            found.append(room_id.split(":", 1)[1])
        if current is not None and self._events is not None:
            # The servers of the stripped state's senders an invite or knock came with.
            event = await self._events.get_event(current.event_id)
            unsigned = event.unsigned if event is not None else {}
            stripped = unsigned.get("invite_room_state", unsigned.get("knock_room_state"))
            for e in stripped if isinstance(stripped, list) else []:
                sender = e.get("sender") if isinstance(e, dict) else None
                if isinstance(sender, str) and ":" in sender:
                    found.append(sender.split(":", 1)[1])
        return found

    async def knock(
        self,
        requester: Requester,
        room_id: RoomID,
        reason: str | None = None,
        servers: Sequence[str] = (),
    ) -> SentEvent:
        """The auth rules decide: a `knock` or `knock_restricted` join rule, and the user
        neither joined, invited nor banned (spec: "Knocking on rooms"). A room this server
        is not in is knocked on through ``servers`` (make_knock, send_knock)."""
        requester.check_not_suspended()
        await self._check_not_blocked(room_id)
        if self._remote is None or await self._is_resident(room_id):
            await self._require_room(room_id)
            return await self.send_own_membership(room_id, requester.user_id, "knock", reason)
        content = await self._member_content(requester.user_id, "knock", reason)
        candidates = [*servers, *await self._servers_of(room_id, requester.user_id)]
        event_id = await self._remote.knock(room_id, requester.user_id, candidates, content)
        return SentEvent(event_id, 0)

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
            target, "invite", reason, {"is_direct": True if is_direct else None}
        )
        sent = await self._sender.send(
            room_id, requester.user_id, "m.room.member", content, state_key=target
        )
        if target.server_name != self._server_name and self._remote is not None:
            await self._invite_remote(requester, room_id, target, sent)
        return sent

    async def _invite_remote(
        self, requester: Requester, room_id: RoomID, target: UserID, sent: SentEvent
    ) -> None:
        """The invitee's server is asked to accept the invite (PUT /v2/invite). The invite
        is in the room already (the send path persists as it builds): if that server
        refuses, the invite is revoked (a leave) and the refusal answered."""
        assert self._remote is not None and self._events is not None
        event = await self._events.get_event(sent.event_id)
        room = await self._rooms.get_room(room_id)
        assert event is not None and room is not None
        state = await self._events.get_current_state_ids(room_id, STRIPPED_STATE_TYPES)
        loaded = await self._events.get_events(i for (_, k), i in state.items() if k == "")
        stripped = [
            {
                "type": e.type,
                "state_key": e.state_key or "",
                "sender": e.sender,
                "content": e.content,
            }
            for e in [*loaded.values(), event]
        ]
        try:
            await self._remote.invite(
                room_id, room.room_version, event.pdu, event.event_id, stripped
            )
        except MatrixError:
            logger.info("remote invite refused", extra={"room_id": room_id})
            try:
                await self._sender.send(
                    room_id,
                    requester.user_id,
                    "m.room.member",
                    {"membership": "leave", "reason": "The invitee's server refused the invite"},
                    state_key=target,
                )
            except MatrixError:
                logger.warning("remote invite not revoked", extra={"room_id": room_id})
            raise

    async def put_member_state(
        self, requester: Requester, room_id: RoomID, state_key: str, content: JsonDict
    ) -> str:
        """PUT /state/m.room.member/{userId} of one's own membership, as Synapse takes it:
        a join (or, joined, a new member event: a per-room display name) with the client's
        content, or a leave. Other changes go through the membership endpoints."""
        membership = content.get("membership")
        if not isinstance(membership, str):
            raise MatrixError(Codes.BAD_JSON, "content.membership must be a string")
        reason = content.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise MatrixError(Codes.BAD_JSON, "content.reason must be a string")
        if state_key != requester.user_id or membership not in ("join", "leave"):
            raise MatrixError(
                Codes.FORBIDDEN,
                "Use the membership endpoints for m.room.member (other than one's own join "
                "or leave)",
            )
        if membership == "leave":
            sent = await self.leave(requester, room_id, reason)
            if sent is None:
                current = await self._rooms.get_membership(room_id, requester.user_id)
                return current.event_id if current is not None else ""
            return sent.event_id
        current = await self._rooms.get_membership(room_id, requester.user_id)
        extra = member_extra(content)
        if current is not None and current.membership == "join":
            requester.check_not_suspended()
            # A joined member's new member event: their content as given (the auth rules
            # judge it), the profile's name and avatar where it leaves them out.
            return (
                await self.send_own_membership(room_id, requester.user_id, "join", reason, extra)
            ).event_id
        return (await self.join(requester, room_id, reason, extra=extra)).event_id

    async def leave(
        self, requester: Requester, room_id: RoomID, reason: str | None = None
    ) -> SentEvent | None:
        await self._require_room(room_id)
        current = await self._rooms.get_membership(room_id, requester.user_id)
        if current is None or current.membership in ("leave", "ban"):
            if current is not None and current.membership == "leave":
                return None  # already gone: leaving is idempotent, as clients expect
            raise MatrixError(Codes.FORBIDDEN, "You are not in this room")
        if (
            self._remote is not None
            and current.membership in ("invite", "knock")
            and not await self._is_resident(room_id)
        ):
            # Declining an invite into a room this server is not in: through the inviter's
            # server (make_leave, send_leave).
            servers = await self._servers_of(room_id, requester.user_id)
            event_id = await self._remote.reject_invite(room_id, requester.user_id, servers)
            return SentEvent(event_id, 0)
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
        if self._invalidations is not None:
            await self._invalidations.invalidate(SYNC_MEMBERSHIPS, (requester.user_id,))

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


# Keys of a member event's content that only the server sets: a client's extra content
# never carries them (join_authorised_via_users_server names who authorised a restricted
# join: the resident server chooses it).
_SERVER_MEMBER_KEYS = frozenset(
    {"membership", "reason", "join_authorised_via_users_server", "third_party_invite"}
)


def member_extra(content: JsonDict | None) -> JsonDict:
    """What a client's join body or member content adds to the member event."""
    if not content:
        return {}
    return {k: v for k, v in content.items() if k not in _SERVER_MEMBER_KEYS}
