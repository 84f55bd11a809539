"""``POST /rooms/{roomId}/upgrade``: a new room of a new version replaces an old one.

spec, "Room Upgrades", server behaviour: check the power to send `m.room.tombstone`, create
the replacement with a `predecessor`, copy the transferable state, move the local aliases,
tombstone the old room and keep everyone but moderators from speaking or inviting there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.events.auth import (
    CREATOR_DEFAULT_LEVEL,
    get_creators,
    get_named_level,
    get_send_level,
    get_user_power_level,
)
from homeserver.events.power_levels import DEFAULT_LEVELS, parse_level
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.rooms.membership import MembershipService
from homeserver.rooms.sender import EventSender
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.rooms import RoomStore

logger = logging.getLogger(__name__)

TOMBSTONE = "m.room.tombstone"
POWER_LEVELS = "m.room.power_levels"
CANONICAL_ALIAS = "m.room.canonical_alias"
# spec: "the recommended state events to transfer" (membership is never transferred).
TRANSFERRED_STATE = (
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
)
# Keys of m.room.create that describe the room rather than its version; copied as they are.
COPIED_CREATE_KEYS = ("type", "m.federate")
# spec: the old room's `events_default` and `invite` become the greater of 50 and
# `users_default + 1`, so that only moderators still speak there.
RESTRICTED_LEVEL = 50
MAX_CREATE_ATTEMPTS = 100
TOMBSTONE_BODY = "This room has been replaced"


class RoomUpgrader:
    def __init__(
        self,
        sender: EventSender,
        events: EventStore,
        rooms: RoomStore,
        memberships: MembershipService,
        clock: Clock,
    ) -> None:
        self._sender = sender
        self._events = events
        self._rooms = rooms
        self._memberships = memberships
        self._clock = clock

    async def upgrade(
        self,
        requester: Requester,
        room_id: RoomID,
        new_version: str,
        additional_creators: Sequence[str] = (),
    ) -> RoomID:
        """Returns the replacement room's ID."""
        version = KNOWN_ROOM_VERSIONS.get(new_version)
        if version is None:
            raise MatrixError(
                Codes.UNSUPPORTED_ROOM_VERSION, f"Room version {new_version!r} is not supported"
            )
        extra_creators = [str(UserID.parse(u)) for u in dict.fromkeys(additional_creators)]
        user_id = requester.user_id
        old = await self._rooms.get_room(room_id)
        m = await self._rooms.get_membership(room_id, user_id) if old is not None else None
        if old is None or m is None or m.membership != "join":
            raise MatrixError(Codes.FORBIDDEN, "You are not in this room")
        old_version = KNOWN_ROOM_VERSIONS[old.room_version]
        state = {
            (e.type, e.state_key or ""): e
            for e in await self._events.get_current_state_events(room_id)
        }
        create = state[("m.room.create", "")]
        pl_event = state.get((POWER_LEVELS, ""))
        pl = dict(pl_event.content) if pl_event is not None else None
        level = get_user_power_level(old_version, user_id, pl, create.pdu)
        if level < get_send_level(old_version, TOMBSTONE, True, pl):
            raise MatrixError(Codes.FORBIDDEN, "You cannot upgrade this room")

        new_room_id = await self._create(
            version, user_id, room_id, old.latest_event_id, create, extra_creators, old.is_public
        )
        await self._memberships.send_own_membership(new_room_id, user_id, "join")
        creators = {user_id, *extra_creators} if version.creators_have_infinite_power else set()
        final_pl = _new_power_levels(old_version, create, pl or {}, user_id, level, creators)
        copied = [
            (t, state[(t, "")].content)
            for t in TRANSFERRED_STATE
            if (t, "") in state and state[(t, "")].content
        ]
        initial_pl = final_pl
        if not version.creators_have_infinite_power:
            # The upgrader sends all the copied state: for that moment they get the highest
            # level it needs, then the copied power levels, exactly, take over.
            needed = max(
                get_send_level(version, t, True, final_pl)
                for t in (POWER_LEVELS, CANONICAL_ALIAS, *(t for t, _ in copied))
            )
            own = get_user_power_level(version, user_id, final_pl, None)
            if own < needed:
                initial_pl = {**final_pl, "users": {**final_pl["users"], user_id: needed}}
        await self._send_state(new_room_id, user_id, POWER_LEVELS, initial_pl)
        for event_type, content in copied:
            await self._send_state(new_room_id, user_id, event_type, content)
        await self._move_aliases(room_id, new_room_id)
        canonical = state.get((CANONICAL_ALIAS, ""))
        if canonical is not None and canonical.content:
            await self._send_state(new_room_id, user_id, CANONICAL_ALIAS, canonical.content)
        if initial_pl is not final_pl:
            await self._send_state(new_room_id, user_id, POWER_LEVELS, final_pl)

        await self._send_state(
            room_id, user_id, TOMBSTONE, {"body": TOMBSTONE_BODY, "replacement_room": new_room_id}
        )
        if old.is_public:
            await self._rooms.set_public(room_id, False)
        if canonical is not None and canonical.content:
            await self._try_state(room_id, user_id, CANONICAL_ALIAS, {})
        if pl is not None:
            restricted = max(RESTRICTED_LEVEL, get_named_level(pl, "users_default") + 1)
            if (
                get_named_level(pl, "events_default") < restricted
                or get_named_level(pl, "invite") < restricted
            ):
                await self._try_state(
                    room_id,
                    user_id,
                    POWER_LEVELS,
                    {**pl, "events_default": restricted, "invite": restricted},
                )
        logger.info("room upgraded", extra={"room_id": room_id, "replacement": new_room_id})
        return new_room_id

    async def _create(
        self,
        version: RoomVersion,
        user_id: str,
        old_room_id: str,
        old_latest: str | None,
        old_create: StoredEvent,
        extra_creators: list[str],
        is_public: bool,
    ) -> RoomID:
        # spec v1.16: `predecessor.event_id` is deprecated but SHOULD be set where practical:
        # the last event of the old room known here.
        predecessor: JsonDict = {"room_id": old_room_id}
        if old_latest is not None:
            predecessor["event_id"] = old_latest
        content: JsonDict = {"room_version": version.identifier, "predecessor": predecessor}
        for key in COPIED_CREATE_KEYS:
            if key in old_create.content:
                content[key] = old_create.content[key]
        if version.creator_in_content:
            content["creator"] = user_id
        # spec: additional creators are never carried over; only the ones asked for count.
        extra = [u for u in extra_creators if u != user_id]
        if version.creators_have_infinite_power and extra:
            content["additional_creators"] = extra
        now = self._clock.now_ms()
        for attempt in range(MAX_CREATE_ATTEMPTS):
            # v12 room IDs are the create event's hash: move the timestamp on until it is new.
            new_room_id, pdu, event_id = self._sender.build_create_event(
                version, user_id, content, now + attempt
            )
            if await self._rooms.create_room(
                new_room_id, version.identifier, user_id, now, is_public=is_public
            ):
                break
        else:
            raise MatrixError(Codes.UNKNOWN, "Could not pick a room ID, try again", status=503)
        await self._sender.persist_create_event(new_room_id, pdu, event_id)
        return new_room_id

    async def _move_aliases(self, old_room_id: str, new_room_id: str) -> None:
        for alias in await self._rooms.get_aliases(old_room_id):
            found = await self._rooms.get_alias(alias)
            if found is None:
                continue  # deleted meanwhile
            await self._rooms.delete_alias(alias)
            await self._rooms.create_alias(alias, new_room_id, found[1])

    async def _send_state(
        self, room_id: str, sender: str, event_type: str, content: JsonDict
    ) -> None:
        await self._sender.send(room_id, sender, event_type, content, state_key="")

    async def _try_state(
        self, room_id: str, sender: str, event_type: str, content: JsonDict
    ) -> None:
        """spec: "If possible": the upgrade stands even if the upgrader lacks this power."""
        try:
            await self._send_state(room_id, sender, event_type, content)
        except MatrixError as e:
            logger.info(
                "old room left as it was after upgrade",
                extra={"room_id": room_id, "type": event_type, "errcode": e.code},
            )


def _new_power_levels(
    old_version: RoomVersion,
    create: StoredEvent,
    pl: JsonDict,
    user_id: str,
    level: int | float,
    creators: set[str],
) -> JsonDict:
    """The old room's power levels for the new room.

    Levels are rewritten as integers: rooms before v10 may write them as strings (and before
    v6 as floats), which the new room's version may refuse (as Synapse does on upgrade).
    Creators of the new room (v12) may not be listed; creators of an old v12 room, who had no
    entry there, keep the top level unless they are creators again: the highest level the
    power levels name, and at least 100, so that nothing in the new room is out of their reach.
    """
    fixed = _integer_levels(pl, old_version)
    users: dict[str, int] = fixed.get("users", {})
    top = max([CREATOR_DEFAULT_LEVEL, *_levels_named(fixed)])
    if old_version.creators_have_infinite_power:
        for creator in get_creators(old_version, create.pdu):
            users.setdefault(creator, top)
    if math.isinf(level):
        users[user_id] = top
    for creator in creators:
        users.pop(creator, None)
    return {**fixed, "users": users}


def _integer_levels(pl: JsonDict, version: RoomVersion) -> JsonDict:
    """``pl`` with every level an integer, as ``version`` reads it; what is not a level in
    ``version`` is left out, so the default applies in the new room as it did in the old."""
    out: JsonDict = {}
    for key, value in pl.items():
        if key in ("users", "events", "notifications"):
            mapping = value if isinstance(value, dict) else {}
            levels = {k: parse_level(v, version) for k, v in mapping.items()}
            out[key] = {k: v for k, v in levels.items() if v is not None}
        elif key in DEFAULT_LEVELS:
            level = parse_level(value, version)
            if level is not None:
                out[key] = level
        else:
            out[key] = value
    out.setdefault("users", {})
    return out


def _levels_named(pl: JsonDict) -> list[int]:
    named = [v for k, v in pl.items() if k in DEFAULT_LEVELS]
    for key in ("events", "notifications"):
        named += list(pl.get(key, {}).values())
    return named
