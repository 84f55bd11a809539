"""``POST /createRoom``: the create event, the creator's join, power levels, presets, invites."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unpaddedbase64 import encode_base64

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomAlias, RoomID, UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.events.auth import check_auth
from homeserver.events.format import check_event_size_and_shape, compute_reference_hash
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.rooms.directory import DirectoryService
from homeserver.rooms.membership import MembershipService
from homeserver.rooms.sender import EventSender
from homeserver.storage.rooms import RoomStore

MAX_CREATE_ATTEMPTS = 100
PRESETS = ("private_chat", "public_chat", "trusted_private_chat")

# spec, createRoom: the events each preset sets (join rules, history, guest access).
_PRESET_STATE: dict[str, dict[str, JsonDict]] = {
    "private_chat": {
        "m.room.join_rules": {"join_rule": "invite"},
        "m.room.history_visibility": {"history_visibility": "shared"},
        "m.room.guest_access": {"guest_access": "can_join"},
    },
    "trusted_private_chat": {
        "m.room.join_rules": {"join_rule": "invite"},
        "m.room.history_visibility": {"history_visibility": "shared"},
        "m.room.guest_access": {"guest_access": "can_join"},
    },
    "public_chat": {
        "m.room.join_rules": {"join_rule": "public"},
        "m.room.history_visibility": {"history_visibility": "shared"},
        "m.room.guest_access": {"guest_access": "forbidden"},
    },
}


@dataclass(frozen=True)
class CreateRoomRequest:
    visibility: str = "private"
    room_alias_name: str | None = None
    name: str | None = None
    topic: str | None = None
    invite: tuple[str, ...] = ()
    room_version: str | None = None
    creation_content: JsonDict = field(default_factory=dict)
    initial_state: tuple[JsonDict, ...] = ()
    preset: str | None = None
    is_direct: bool = False
    power_level_content_override: JsonDict | None = None


class RoomCreator:
    def __init__(
        self,
        sender: EventSender,
        rooms: RoomStore,
        memberships: MembershipService,
        directory: DirectoryService,
        server_name: str,
        default_version: str,
        clock: Clock,
    ) -> None:
        self._sender = sender
        self._rooms = rooms
        self._memberships = memberships
        self._directory = directory
        self._server_name = server_name
        self._default_version = default_version
        self._clock = clock

    async def create_room(self, requester: Requester, req: CreateRoomRequest) -> RoomID:
        version_id = self._default_version if req.room_version is None else req.room_version
        version = KNOWN_ROOM_VERSIONS.get(version_id)
        if version is None:
            raise MatrixError(
                Codes.UNSUPPORTED_ROOM_VERSION, f"Room version {version_id!r} is not supported"
            )
        preset = req.preset or ("public_chat" if req.visibility == "public" else "private_chat")
        invitees = [UserID.parse(u) for u in dict.fromkeys(req.invite)]
        for invitee in invitees:
            await self._memberships.check_invitable(invitee)
        alias: RoomAlias | None = None
        if req.room_alias_name is not None:
            alias = self._directory.local_alias(req.room_alias_name)
            await self._directory.check_alias_free(alias, requester)
        for state in req.initial_state:
            _check_initial_state(state)

        creator = requester.user_id
        create_content = self._create_content(version, creator, req, preset, invitees)
        power_levels = self._power_levels(
            version, creator, preset, invitees, req.power_level_content_override
        )
        setup = self._initial_state(req, preset, alias, power_levels)
        now = self._clock.now_ms()
        self._check_setup(version, creator, create_content, setup, invitees, now)
        for attempt in range(MAX_CREATE_ATTEMPTS):
            # In room version 12 the room ID is the create event's hash: the same user
            # creating two rooms alike in the same millisecond would get the same ID, so the
            # timestamp moves on until the ID is new.
            room_id, create_pdu, create_id = self._sender.build_create_event(
                version, creator, create_content, now + attempt
            )
            if await self._rooms.create_room(
                room_id, version.identifier, creator, now, is_public=req.visibility == "public"
            ):
                break
        else:
            raise MatrixError(Codes.UNKNOWN, "Could not pick a room ID, try again", status=503)
        await self._sender.persist_create_event(room_id, create_pdu, create_id)
        await self._memberships.send_own_membership(room_id, creator, "join")
        if alias is not None:
            await self._directory.create_alias(requester, alias, room_id, check_power=False)
        for event_type, state_key, content in setup:
            await self._send_state(room_id, creator, event_type, content, state_key)
        for invitee in invitees:
            await self._memberships.invite(requester, room_id, invitee, is_direct=req.is_direct)
        return room_id

    def _initial_state(
        self, req: CreateRoomRequest, preset: str, alias: RoomAlias | None, power_levels: JsonDict
    ) -> list[tuple[str, str, JsonDict]]:
        """(type, state_key, content) of the state events after the creator's join, in order."""
        out: list[tuple[str, str, JsonDict]] = [("m.room.power_levels", "", power_levels)]
        if alias is not None:
            out.append(("m.room.canonical_alias", "", {"alias": alias}))
        initial = {(s["type"], s.get("state_key", "")): s["content"] for s in req.initial_state}
        out += [
            (event_type, "", content)
            for event_type, content in _PRESET_STATE[preset].items()
            if (event_type, "") not in initial
        ]
        out += [
            (event_type, state_key, content) for (event_type, state_key), content in initial.items()
        ]
        if req.name is not None:
            out.append(("m.room.name", "", {"name": req.name}))
        if req.topic is not None:
            out.append(("m.room.topic", "", _topic_content(req.topic)))
        return out

    def _check_setup(
        self,
        version: RoomVersion,
        creator: str,
        create_content: JsonDict,
        state: list[tuple[str, str, JsonDict]],
        invitees: list[UserID],
        now: int,
    ) -> None:
        """Run the room's first events through the auth rules before any is stored: a room
        that cannot be set up as asked is refused whole, not left half made (spec, createRoom:
        400 M_INVALID_ROOM_STATE, e.g. power levels too low to set the name)."""
        room_id, create, create_id = self._sender.build_create_event(
            version, creator, create_content, now
        )
        auth_state: dict[tuple[str, str], JsonDict] = {("m.room.create", ""): create}
        # The auth rules read the creator's join's prev_events (rule 4.2): in the version's
        # format, `[ID, hashes]` pairs in v1-v2.
        prev_events: list[Any] = [create_id]
        if version.event_id_in_event:
            prev_events = [
                [create_id, {"sha256": encode_base64(compute_reference_hash(create, version))}]
            ]
        events = [
            ("m.room.member", creator, {"membership": "join"}),
            *state,
            *(("m.room.member", str(u), {"membership": "invite"}) for u in invitees),
        ]
        for event_type, state_key, content in events:
            pdu: JsonDict = {
                "room_id": room_id,
                "sender": creator,
                "type": event_type,
                "state_key": state_key,
                "content": content,
                "origin_server_ts": now,
                "prev_events": prev_events,
            }
            check_event_size_and_shape(pdu)
            try:
                check_auth(version, pdu, auth_state, create_event=create)
            except MatrixError as e:
                raise MatrixError(
                    Codes.INVALID_ROOM_STATE, f"Cannot send {event_type}: {e.message}"
                ) from e
            auth_state[(event_type, state_key)] = pdu

    async def _send_state(
        self, room_id: str, sender: str, event_type: str, content: JsonDict, state_key: str = ""
    ) -> None:
        await self._sender.send(room_id, sender, event_type, content, state_key=state_key)

    def _create_content(
        self,
        version: RoomVersion,
        creator: str,
        req: CreateRoomRequest,
        preset: str,
        invitees: list[UserID],
    ) -> JsonDict:
        content = dict(req.creation_content)
        content["room_version"] = version.identifier
        if version.creator_in_content:
            content["creator"] = creator
        else:
            content.pop("creator", None)
        if version.creators_have_infinite_power and preset == "trusted_private_chat":
            # v12: "the same power level as the creator" is being a creator.
            extra = [u for u in content.get("additional_creators", []) if isinstance(u, str)]
            content["additional_creators"] = list(dict.fromkeys([*extra, *invitees]))
        return content

    def _power_levels(
        self,
        version: RoomVersion,
        creator: str,
        preset: str,
        invitees: list[UserID],
        override: JsonDict | None,
    ) -> JsonDict:
        users: dict[str, int] = {}
        if not version.creators_have_infinite_power:
            # str(): orjson refuses str subclasses (UserID) as keys.
            users[str(creator)] = 100
            if preset == "trusted_private_chat":
                users.update({str(u): 100 for u in invitees})
        content: JsonDict = {
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
                "m.room.topic": 50,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 50 if preset == "public_chat" else 0,
            "notifications": {"room": 50},
        }
        if version.creators_have_infinite_power:
            content["events"]["m.room.tombstone"] = 150  # v12: upgrades are for creators
        if override:
            content.update(override)
        return content


def _topic_content(topic: str) -> JsonDict:
    # spec v1.15: m.topic carries the topic as text/plain for clients that read it.
    return {"topic": topic, "m.topic": [{"mimetype": "text/plain", "body": topic}]}


def _check_initial_state(state: JsonDict) -> None:
    if not isinstance(state.get("type"), str) or not isinstance(state.get("content"), dict):
        raise MatrixError(Codes.BAD_JSON, "initial_state entries need a type and a content")
    if not isinstance(state.get("state_key", ""), str):
        raise MatrixError(Codes.BAD_JSON, "initial_state state_key must be a string")
    if state["type"] in ("m.room.create", "m.room.member", "m.room.power_levels"):
        raise MatrixError(Codes.BAD_JSON, f"initial_state may not set {state['type']}")
