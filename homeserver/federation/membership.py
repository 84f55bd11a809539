"""Users of other servers joining, leaving and knocking on our rooms, and other servers
inviting our users into theirs (server-server API, "Joining rooms", "Leaving rooms",
"Knocking upon a room", "Inviting to a room").

make_join/make_leave/make_knock build an event template the auth rules allow on the room's
current state; send_join/send_leave/send_knock check the event the remote server signed
(its shape, that it is the membership of a user of that server, its signatures through the
keyring), sign it as the resident server and persist it through ``IncomingEvents``, the
receipt checks every event from another server passes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from unpaddedbase64 import encode_base64

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.crypto.signing import SigningKey
from homeserver.events.auth import auth_types_for_event, check_auth
from homeserver.events.format import compute_reference_hash, event_id_of, redact, sign_event
from homeserver.events.power_levels import get_named_level, get_user_power_level
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from homeserver.events.stripped import STRIPPED_STATE_TYPES
from homeserver.federation.acl import RoomAcls
from homeserver.federation.event_checks import check_received_pdu
from homeserver.federation.keyring import Keyring
from homeserver.federation.room_reads import as_pdu
from homeserver.rooms.incoming import IncomingEvents, Outcome
from homeserver.rooms.membership import InvitePermissions
from homeserver.rooms.sender import MAX_PREV_EVENTS
from homeserver.storage.events import EventStore, StateMap, StoredEvent
from homeserver.storage.events.federation_reads import FederationReads
from homeserver.storage.events.remote_rooms import RemoteRoomWrites
from homeserver.storage.rooms import RoomStore
from homeserver.wakeups.notifier import Notifier

logger = logging.getLogger(__name__)

MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
CREATE = "m.room.create"
# Stripped state events kept with an invite from another server (it sends a handful).
MAX_INVITE_STATE = 50


@dataclass(frozen=True, slots=True)
class JoinAnswer:
    """What send_join answers: the state before the join, the auth chain of that state and
    of the join, and the join as we signed it."""

    state: list[JsonDict]
    auth_chain: list[JsonDict]
    event: JsonDict
    servers_in_room: list[str]


class LocalUsers(Protocol):
    """Whether a user of ours exists (the account store)."""

    async def get_profile(self, user_id: UserID) -> object | None: ...


def _check_event_id(pdu: JsonDict, event_id: str, version: RoomVersion) -> None:
    """The path's event ID must be the event's: derived from its hash from room version 3,
    its own ``event_id`` in versions 1 and 2."""
    try:
        computed = event_id_of(pdu, version)
    except (ValueError, TypeError, KeyError) as e:
        raise MatrixError(Codes.BAD_JSON, "The event cannot be hashed") from e
    if computed != event_id:
        raise MatrixError(Codes.BAD_JSON, "The event ID does not match the event")


def stripped(event: StoredEvent) -> JsonDict:
    return {
        "type": event.type,
        "state_key": event.state_key or "",
        "sender": event.sender,
        "content": event.content,
    }


class FederatedMembership:
    def __init__(
        self,
        events: EventStore,
        rooms: RoomStore,
        reads: FederationReads,
        acls: RoomAcls,
        keyring: Keyring,
        incoming: IncomingEvents,
        clock: Clock,
        server_name: str,
        signing_key: SigningKey,
        remote_rooms: RemoteRoomWrites,
        notifier: Notifier,
        local_users: LocalUsers | None = None,
        invite_permissions: InvitePermissions | None = None,
    ) -> None:
        self._events = events
        self._rooms = rooms
        self._reads = reads
        self._acls = acls
        self._keyring = keyring
        self._incoming = incoming
        self._clock = clock
        self._server_name = server_name
        self._signing_key = signing_key
        self._remote_rooms = remote_rooms
        self._notifier = notifier
        self._local_users = local_users
        self._invite_permissions = invite_permissions

    # --- make_* ----------------------------------------------------------------------------

    async def make_membership(
        self,
        origin: str,
        room_id: str,
        user_id: str,
        membership: str,
        supported_versions: Sequence[str] | None,
    ) -> tuple[JsonDict, str]:
        """A template of ``user_id``'s ``membership`` event and the room's version.

        ``supported_versions`` (make_join and make_knock's ``ver``): the room's version must
        be among them (400 M_INCOMPATIBLE_ROOM_VERSION)."""
        version = await self._room_version(room_id)
        await self._acls.check(room_id, origin)
        user = UserID.parse(user_id)
        if user.server_name != origin:
            raise MatrixError(Codes.FORBIDDEN, "The user is not on the requesting server")
        if supported_versions is not None and version.identifier not in supported_versions:
            raise MatrixError(
                Codes.INCOMPATIBLE_ROOM_VERSION,
                f"Your server does not support room version {version.identifier}",
                room_version=version.identifier,
            )
        room = await self._rooms.get_room_head(room_id)
        if room is None or room.current_state_group is None or not room.forward_extremities:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")
        state = await self._events.get_current_state_ids(room_id)
        content: JsonDict = {"membership": membership}
        if membership == "join":
            authoriser = await self._restricted_join_authoriser(version, room_id, user_id, state)
            if authoriser is not None:
                content["join_authorised_via_users_server"] = authoriser
        parents = room.forward_extremities[:MAX_PREV_EVENTS]
        wanted = auth_types_for_event(version, MEMBER, user_id, user_id, content)
        auth_ids = [state[k] for k in wanted if k in state]
        prev_ids = [e.event_id for e in parents]
        template: JsonDict = {
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "type": MEMBER,
            "content": content,
            "origin": self._server_name,
            "origin_server_ts": self._clock.now_ms(),
            "depth": max(e.depth for e in parents) + 1,
            "prev_events": await self._references(prev_ids, version),
            "auth_events": await self._references(auth_ids, version),
        }
        auth_events = await self._keyed(version, state, wanted)
        create = auth_events.get((CREATE, "")) or await self._create_of(version, state)
        probe = template
        if "join_authorised_via_users_server" in content:
            # The auth rules want our signature on a restricted join: send_join adds it.
            probe = copy.deepcopy(template)
            sign_event(probe, self._server_name, self._signing_key, version)
        try:
            check_auth(version, probe, auth_events, create_event=create)
        except MatrixError as e:
            raise MatrixError(Codes.FORBIDDEN, f"The room does not allow it: {e.message}") from e
        return template, version.identifier

    async def _restricted_join_authoriser(
        self, version: RoomVersion, room_id: str, user_id: str, state: StateMap
    ) -> str | None:
        """For a restricted room that the user may not join by itself (neither invited nor
        joined): a user of ours who can invite, once the user is joined to a room the join
        rule allows. None when the join needs no authoriser."""
        if not version.restricted_join_rule:
            return None
        rules_id = state.get((JOIN_RULES, ""))
        rules = await self._events.get_event(rules_id) if rules_id else None
        join_rule = rules.content.get("join_rule") if rules else None
        if join_rule not in ("restricted", "knock_restricted"):
            return None
        current = await self._rooms.get_membership(room_id, user_id)
        if current is not None and current.membership in ("invite", "join"):
            return None
        allow = rules.content.get("allow") if rules else None
        allowed_rooms = [
            a.get("room_id")
            for a in (allow if isinstance(allow, list) else [])
            if isinstance(a, dict) and a.get("type") == "m.room_membership"
        ]
        member_of_allowed = False
        for allowed in allowed_rooms:
            if isinstance(allowed, str):
                m = await self._rooms.get_membership(allowed, user_id)
                if m is not None and m.membership == "join":
                    member_of_allowed = True
                    break
        if not member_of_allowed:
            raise MatrixError(
                Codes.UNABLE_TO_AUTHORISE_JOIN,
                "The user is not joined to a room the join rule allows (as this server knows)",
            )
        power_id = state.get((POWER_LEVELS, ""))
        power = await self._events.get_event(power_id) if power_id else None
        create = await self._create_of(version, state)
        levels = power.content if power else None
        needed = get_named_level(levels, "invite", version=version)
        for m in await self._rooms.get_room_members(room_id, ["join"]):
            if m.user_id.endswith(":" + self._server_name) and (
                get_user_power_level(version, m.user_id, levels, create) >= needed
            ):
                return m.user_id
        raise MatrixError(Codes.UNABLE_TO_GRANT_JOIN, "No user of this server can invite")

    # --- send_* ----------------------------------------------------------------------------

    async def send_join(
        self, origin: str, room_id: str, event_id: str, pdu: JsonDict
    ) -> JoinAnswer:
        version = await self._room_version(room_id)
        await self._acls.check(room_id, origin)
        pdu = await self._check_membership_pdu(origin, room_id, event_id, pdu, version, "join")
        # Signed as the resident server (a restricted join we authorise was signed already,
        # before the checks that require it): the joining server then holds a copy that
        # verifies with both. Signatures are not hashed: the event ID stays.
        sign_event(pdu, self._server_name, self._signing_key, version)
        await self._persist(room_id, event_id, pdu, version)
        stored = await self._events.get_event(event_id)
        assert stored is not None
        before = await self._events.get_state_before(stored)
        state_ids = sorted(before.values())
        chain = await self._events.get_auth_chain([*state_ids, event_id])
        loaded = await self._events.get_events([*state_ids, *chain])
        return JoinAnswer(
            [as_pdu(loaded[i], version) for i in state_ids if i in loaded],
            [as_pdu(loaded[i], version) for i in sorted(chain) if i in loaded],
            pdu,
            await self._reads.joined_servers(room_id),
        )

    async def send_leave(self, origin: str, room_id: str, event_id: str, pdu: JsonDict) -> None:
        version = await self._room_version(room_id)
        await self._acls.check(room_id, origin)
        pdu = await self._check_membership_pdu(origin, room_id, event_id, pdu, version, "leave")
        sign_event(pdu, self._server_name, self._signing_key, version)
        await self._persist(room_id, event_id, pdu, version)

    async def send_knock(
        self, origin: str, room_id: str, event_id: str, pdu: JsonDict
    ) -> list[JsonDict]:
        """The knock persisted; the room's stripped state for the knocking user's server."""
        version = await self._room_version(room_id)
        if not version.knock_join_rule:
            raise MatrixError(
                Codes.INCOMPATIBLE_ROOM_VERSION,
                f"Room version {version.identifier} has no knocking",
                room_version=version.identifier,
            )
        await self._acls.check(room_id, origin)
        pdu = await self._check_membership_pdu(origin, room_id, event_id, pdu, version, "knock")
        sign_event(pdu, self._server_name, self._signing_key, version)
        await self._persist(room_id, event_id, pdu, version)
        return await self.stripped_state(room_id)

    async def stripped_state(self, room_id: str) -> list[JsonDict]:
        state = await self._events.get_current_state_ids(room_id, STRIPPED_STATE_TYPES)
        loaded = await self._events.get_events(i for (_, k), i in state.items() if k == "")
        return [stripped(e) for e in loaded.values()]

    async def _check_membership_pdu(
        self,
        origin: str,
        room_id: str,
        event_id: str,
        pdu: JsonDict,
        version: RoomVersion,
        membership: str,
    ) -> JsonDict:
        """The PDU as sent, once it is the ``membership`` of a user of ``origin`` in this
        room, with the event ID of the path and the signatures it needs."""
        if pdu.get("type") != MEMBER:
            raise MatrixError(Codes.BAD_JSON, "Not an m.room.member event")
        if pdu.get("room_id") != room_id:
            raise MatrixError(Codes.BAD_JSON, "The event is for another room")
        state_key, sender = pdu.get("state_key"), pdu.get("sender")
        if not isinstance(state_key, str) or state_key != sender:
            raise MatrixError(Codes.BAD_JSON, "The event's sender and state_key differ")
        try:
            user = UserID.parse(state_key)
        except MatrixError as e:
            raise MatrixError(Codes.BAD_JSON, "The event's state_key is not a user ID") from e
        if user.server_name != origin:
            raise MatrixError(Codes.FORBIDDEN, "The user is not on the requesting server")
        content = pdu.get("content")
        if not isinstance(content, dict) or content.get("membership") != membership:
            raise MatrixError(Codes.BAD_JSON, f"The event's membership is not {membership!r}")
        _check_event_id(pdu, event_id, version)
        authoriser = content.get("join_authorised_via_users_server")
        if (
            membership == "join"
            and isinstance(authoriser, str)
            and authoriser.endswith(":" + self._server_name)
        ):
            sign_event(pdu, self._server_name, self._signing_key, version)
        await check_received_pdu(self._keyring, pdu, version)
        return pdu

    async def _persist(
        self, room_id: str, event_id: str, pdu: JsonDict, version: RoomVersion
    ) -> None:
        [result] = await self._incoming.receive(room_id, [pdu], self._clock.now_ms())
        if result.outcome is Outcome.ACCEPTED:
            return
        if result.outcome is Outcome.KNOWN:
            # A retry: answered as the first time, unless the first time refused it. In
            # room versions 1 and 2 the sender names its events, so the ID alone does not
            # say it is the same event: another one under it (of another room, perhaps) is
            # refused, never answered with its room's state. The reference hash leaves out
            # signatures (ours were added) and is the same for a redacted copy.
            known = await self._events.get_event(event_id)
            if (
                known is None
                or known.room_id != room_id
                or compute_reference_hash(known.pdu, version)
                != compute_reference_hash(pdu, version)
            ):
                raise MatrixError(Codes.BAD_JSON, "Another event has this event ID")
            if known.served:
                return
            reason = await self._events.get_rejection(event_id)
            raise MatrixError(
                Codes.FORBIDDEN, f"The event is not allowed: {reason or 'soft-failed'}"
            )
        if result.outcome is Outcome.MISSING:
            raise MatrixError(
                Codes.BAD_JSON, "The event refers to events this server does not know"
            )
        if result.outcome is Outcome.DROPPED:
            raise MatrixError(Codes.BAD_JSON, f"The event is invalid: {result.reason}")
        logger.info(
            "remote membership refused",
            extra={"room_id": room_id, "event_id": event_id, "reason": result.reason},
        )
        raise MatrixError(Codes.FORBIDDEN, f"The event is not allowed: {result.reason}")

    # --- invites of our users into other servers' rooms -----------------------------------

    async def on_invite(
        self,
        origin: str,
        room_id: str,
        event_id: str,
        room_version: str,
        pdu: JsonDict,
        invite_room_state: list[JsonDict],
    ) -> JsonDict:
        """PUT /v2/invite: check the invite of one of our users, sign it, and record it so
        that the user's sync shows the invite with the room's stripped state."""
        version = KNOWN_ROOM_VERSIONS.get(room_version)
        if version is None:
            raise MatrixError(
                Codes.INCOMPATIBLE_ROOM_VERSION,
                f"This server does not support room version {room_version}",
                room_version=room_version,
            )
        if pdu.get("type") != MEMBER:
            raise MatrixError(Codes.BAD_JSON, "Not an m.room.member event")
        if pdu.get("room_id") != room_id:
            raise MatrixError(Codes.BAD_JSON, "The event is for another room")
        content = pdu.get("content")
        if not isinstance(content, dict) or content.get("membership") != "invite":
            raise MatrixError(Codes.BAD_JSON, "The event's membership is not 'invite'")
        sender, state_key = pdu.get("sender"), pdu.get("state_key")
        if not isinstance(sender, str) or not isinstance(state_key, str):
            raise MatrixError(Codes.BAD_JSON, "The event has no sender or state_key")
        try:
            inviter, invitee = UserID.parse(sender), UserID.parse(state_key)
        except MatrixError as e:
            raise MatrixError(Codes.BAD_JSON, "The event's users are not user IDs") from e
        if inviter.server_name != origin:
            raise MatrixError(Codes.FORBIDDEN, "The inviter is not on the requesting server")
        if invitee.server_name != self._server_name:
            raise MatrixError(Codes.BAD_JSON, "The invited user is not on this server")
        if self._local_users is not None and await self._local_users.get_profile(invitee) is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown user")
        if self._invite_permissions is not None and await self._invite_permissions.blocks_invites(
            invitee
        ):
            # As for a local inviter (rooms/membership.py): the spec's invite permission.
            raise MatrixError(Codes.INVITE_BLOCKED, f"{invitee} does not accept invites")
        _check_event_id(pdu, event_id, version)
        await self._acl_if_known(room_id, origin)
        await check_received_pdu(self._keyring, pdu, version)
        sign_event(pdu, self._server_name, self._signing_key, version)
        room = await self._rooms.get_room(room_id)
        if room is not None and room.current_state_group is not None:
            # We are in the room: the invite reaches us again in a transaction, like any
            # event of the room.
            return pdu
        state = [e for e in invite_room_state if isinstance(e, dict)][:MAX_INVITE_STATE]
        position = await self._remote_rooms.store_remote_membership(
            room_id,
            version.identifier,
            event_id,
            pdu,
            {"invite_room_state": state},
            self._clock.now_ms(),
        )
        if position is not None:
            await self._notifier.notify(
                Stream.EVENTS, position, room_id=room_id, user_ids=(state_key,)
            )
        return pdu

    async def _acl_if_known(self, room_id: str, origin: str) -> None:
        room = await self._rooms.get_room(room_id)
        if room is not None and room.current_state_group is not None:
            await self._acls.check(room_id, origin)

    # --- helpers ---------------------------------------------------------------------------

    async def _room_version(self, room_id: str) -> RoomVersion:
        identifier = await self._rooms.get_room_version(room_id)
        if identifier is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")
        room = await self._rooms.get_room(room_id)
        if room is None or room.current_state_group is None:
            # A room we only know by an invite of one of our users: not ours to serve.
            raise MatrixError(Codes.NOT_FOUND, "This server is not in the room")
        return KNOWN_ROOM_VERSIONS[identifier]

    async def _references(self, event_ids: list[str], version: RoomVersion) -> list[object]:
        """``prev_events`` or ``auth_events`` of a template in the room version's format:
        the IDs from v3; in v1 and v2 ``[ID, {"sha256": reference hash}]`` pairs."""
        if version.event_format is not EventFormat.V1:
            return list(event_ids)
        loaded = await self._events.get_events(event_ids)
        out: list[object] = []
        for event_id in event_ids:
            event = loaded.get(event_id)
            if event is None:
                raise MatrixError(Codes.UNKNOWN, "An event of the room is missing")
            reference = encode_base64(compute_reference_hash(event.pdu, version))
            out.append([event_id, {"sha256": reference}])
        return out

    async def _keyed(
        self, version: RoomVersion, state: StateMap, wanted: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], JsonDict]:
        ids = {k: state[k] for k in wanted if k in state}
        loaded = await self._events.get_events(ids.values())
        return {
            k: (loaded[i].pdu if loaded[i].redacted_by is None else redact(loaded[i].pdu, version))
            for k, i in ids.items()
            if i in loaded
        }

    async def _create_of(self, version: RoomVersion, state: StateMap) -> JsonDict | None:
        create_id = state.get((CREATE, ""))
        if create_id is None:
            return None
        create = await self._events.get_event(create_id)
        return create.pdu if create is not None else None
