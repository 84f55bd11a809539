"""Room aliases and the public room directory."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from homeserver.appservice.service import AppServiceQueries
from homeserver.core import jsonutil
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import (
    MAX_ID_BYTES,
    RoomAlias,
    RoomID,
    UserID,
    is_valid_new_alias_localpart,
)
from homeserver.core.types import JsonDict, Requester
from homeserver.events.auth import get_send_level, get_user_power_level
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.storage.events import EventStore
from homeserver.storage.rooms import RoomStore

logger = logging.getLogger(__name__)

MAX_PUBLIC_ROOMS_LIMIT = 500
_DIRECTORY_STATE = (
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.create",
)


class RemoteAliases(Protocol):
    """Other servers' aliases (federation's ``FederationQueries``; None with federation
    off)."""

    async def query_directory(self, alias: RoomAlias) -> Any: ...


# Servers taken from another server's answer for one alias.
MAX_ALIAS_SERVERS = 20


class DirectoryService:
    def __init__(
        self,
        rooms: RoomStore,
        events: EventStore,
        server_name: str,
        appservices: AppServiceQueries | None = None,
        remote: RemoteAliases | None = None,
    ) -> None:
        self._rooms = rooms
        self._events = events
        self._server_name = server_name
        # Aliases in application services' namespaces: reserved, and asked of them if unknown.
        self._appservices = appservices
        self._remote = remote

    def local_alias(self, localpart: str) -> RoomAlias:
        if "#" in localpart or not is_valid_new_alias_localpart(localpart):
            raise MatrixError(Codes.INVALID_PARAM, "Invalid room alias name")
        alias = f"#{localpart}:{self._server_name}"
        if len(alias.encode()) > MAX_ID_BYTES:
            raise MatrixError(Codes.INVALID_PARAM, "Room alias is too long")
        return RoomAlias.parse(alias)

    async def check_alias_free(self, alias: RoomAlias, requester: Requester | None = None) -> None:
        if requester is not None and self._appservices is not None:
            self._appservices.check_alias_allowed(requester, alias)
        if await self._rooms.get_alias(alias) is not None:
            raise MatrixError(Codes.ROOM_IN_USE, "Room alias already taken")

    async def create_alias(
        self, requester: Requester, alias: RoomAlias, room_id: RoomID, *, check_power: bool = True
    ) -> None:
        if alias.server_name != self._server_name:
            raise MatrixError(Codes.INVALID_PARAM, "Aliases must be on this server")
        if not is_valid_new_alias_localpart(alias.localpart):
            raise MatrixError(Codes.INVALID_PARAM, "Invalid room alias name")
        if self._appservices is not None:
            self._appservices.check_alias_allowed(requester, alias)
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")
        if check_power:
            m = await self._rooms.get_membership(room_id, requester.user_id)
            if m is None or m.membership != "join":
                raise MatrixError(Codes.FORBIDDEN, "You are not in this room")
        if not await self._rooms.create_alias(alias, room_id, requester.user_id):
            # spec, PUT /directory/room: a taken alias is a 409 (createRoom checks first: 400).
            raise MatrixError(Codes.ROOM_IN_USE, "Room alias already taken", status=409)

    async def resolve_alias(self, alias: RoomAlias) -> tuple[str, list[str]]:
        if alias.server_name != self._server_name and self._remote is not None:
            return await self._resolve_remote_alias(alias)
        found = await self._rooms.get_alias(alias)
        if (
            found is None
            and self._appservices is not None
            and alias.server_name == self._server_name
            and await self._appservices.query_alias(alias)
        ):
            # spec: a service that answers 200 has created the room and its alias.
            found = await self._rooms.get_alias(alias)
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, f"Room alias {alias} not found")
        return found[0], [self._server_name]

    async def _resolve_remote_alias(self, alias: RoomAlias) -> tuple[str, list[str]]:
        """An alias of another server, asked of it (GET /query/directory)."""
        assert self._remote is not None
        try:
            answer = await self._remote.query_directory(alias)
        except Exception as e:  # unreachable, refused, malformed: the alias is not found
            logger.info("remote alias not resolved", extra={"alias": alias, "error": str(e)})
            raise MatrixError(Codes.NOT_FOUND, f"Room alias {alias} not found") from e
        room_id = answer.get("room_id") if isinstance(answer, dict) else None
        servers = answer.get("servers") if isinstance(answer, dict) else None
        try:
            parsed = RoomID.parse(room_id) if isinstance(room_id, str) else None
        except MatrixError:
            parsed = None
        if parsed is None:
            raise MatrixError(Codes.NOT_FOUND, f"Room alias {alias} not found")
        found = (
            [s for s in servers if isinstance(s, str)][:MAX_ALIAS_SERVERS]
            if isinstance(servers, list)
            else []
        )
        return parsed, [alias.server_name, *found]

    async def resolve_room(self, room_id_or_alias: str) -> RoomID:
        """A room ID, or the room an alias points to (join and knock take either)."""
        room_id, _ = await self.resolve_room_and_servers(room_id_or_alias)
        return room_id

    async def resolve_room_and_servers(self, room_id_or_alias: str) -> tuple[RoomID, list[str]]:
        """A room ID, or the room an alias points to, with the servers the alias names (to
        join through)."""
        if room_id_or_alias.startswith("#"):
            room_id, servers = await self.resolve_alias(RoomAlias.parse(room_id_or_alias))
            return RoomID(room_id), servers
        if room_id_or_alias.startswith("!"):
            return RoomID.parse(room_id_or_alias), []
        raise MatrixError(Codes.INVALID_PARAM, "Expected a room ID or a room alias")

    async def delete_alias(self, requester: Requester, alias: RoomAlias) -> None:
        found = await self._rooms.get_alias(alias)
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, f"Room alias {alias} not found")
        room_id, creator = found
        if creator != requester.user_id and not requester.is_admin:
            if not await self.can_send_state(
                requester.user_id, RoomID(room_id), "m.room.canonical_alias"
            ):
                raise MatrixError(Codes.FORBIDDEN, "You may not delete this alias")
        await self._rooms.delete_alias(alias)

    async def room_aliases(self, requester: Requester, room_id: RoomID) -> list[str]:
        await self._require_member_or_world_readable(requester.user_id, room_id)
        return await self._rooms.get_aliases(room_id)

    async def can_send_state(self, user_id: UserID, room_id: RoomID, event_type: str) -> bool:
        room = await self._rooms.get_room(room_id)
        if room is None:
            return False
        version = KNOWN_ROOM_VERSIONS[room.room_version]
        pl = await self._events.get_current_state_event(room_id, "m.room.power_levels", "")
        create = await self._events.get_current_state_event(room_id, "m.room.create", "")
        level = get_user_power_level(
            version, user_id, pl.content if pl else None, create.pdu if create else None
        )
        return level >= get_send_level(version, event_type, True, pl.content if pl else None)

    async def _require_member_or_world_readable(self, user_id: str, room_id: str) -> None:
        if await self._rooms.get_room(room_id) is None:
            # spec, GET /rooms/{roomId}/aliases: outsiders get M_FORBIDDEN (no 404), which
            # also keeps the room's existence private.
            raise MatrixError(Codes.FORBIDDEN, "You are not in this room")
        m = await self._rooms.get_membership(room_id, user_id)
        if m is not None and m.membership == "join":
            return
        hv = await self._events.get_current_state_event(room_id, "m.room.history_visibility", "")
        if hv is None or hv.content.get("history_visibility") != "world_readable":
            raise MatrixError(Codes.FORBIDDEN, "You are not in this room")

    # --- the public room directory ---------------------------------------------------------

    async def get_visibility(self, room_id: RoomID) -> str:
        room = await self._rooms.get_room(room_id)
        if room is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")
        return "public" if room.is_public else "private"

    async def set_visibility(self, requester: Requester, room_id: RoomID, visibility: str) -> None:
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")
        if not requester.is_admin and not await self.can_send_state(
            requester.user_id, room_id, "m.room.canonical_alias"
        ):
            raise MatrixError(Codes.FORBIDDEN, "You may not change this room's visibility")
        await self._rooms.set_public(room_id, visibility == "public")

    async def set_network_visibility(
        self, requester: Requester, network_id: str, room_id: RoomID, visibility: str
    ) -> None:
        """PUT /directory/list/appservice/{networkId}/{roomId}: an application service
        publishes a room in its own network's directory (not the server's own list)."""
        if requester.app_service_id is None:
            raise MatrixError(
                Codes.FORBIDDEN, "Only application services may edit their networks' room lists"
            )
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")
        await self._rooms.set_network_listing(
            requester.app_service_id, network_id, room_id, visibility == "public"
        )

    async def public_rooms(
        self,
        *,
        limit: int | None,
        since: str | None,
        search_term: str | None,
        room_types: tuple[str | None, ...] | None,
        third_party_instance_id: str | None = None,
        include_all_networks: bool = False,
    ) -> JsonDict:
        network = None
        if third_party_instance_id is not None:
            # Instance IDs are "{service ID}|{network ID}|..." (homeserver/appservice/service.py).
            parts = third_party_instance_id.split("|")
            if len(parts) < 2 or not parts[0] or not parts[1]:
                raise MatrixError(Codes.INVALID_PARAM, "Unknown third_party_instance_id")
            network = (parts[0], parts[1])
        rooms = await self._rooms.get_public_room_ids(
            network=network, all_networks=include_all_networks
        )
        contents = await self._rooms.get_current_state_contents(
            [r for r, _ in rooms], _DIRECTORY_STATE
        )
        chunk = [
            entry
            for room_id, joined in rooms
            if (entry := _directory_entry(room_id, joined, contents.get(room_id, {}))) is not None
            and _matches(entry, search_term)
            and (room_types is None or entry.get("room_type") in room_types)
        ]
        offset = _parse_since(since)
        limit = MAX_PUBLIC_ROOMS_LIMIT if limit is None else min(limit, MAX_PUBLIC_ROOMS_LIMIT)
        page = chunk[offset : offset + limit]
        out: JsonDict = {"chunk": page, "total_room_count_estimate": len(chunk)}
        if limit > 0 and offset + limit < len(chunk):
            out["next_batch"] = f"p{offset + limit}"
        if offset > 0:
            out["prev_batch"] = f"p{max(0, offset - limit)}"
        return out


def _parse_since(since: str | None) -> int:
    if since is None:
        return 0
    if not since.startswith("p") or not since[1:].isdigit():
        raise MatrixError(Codes.INVALID_PARAM, "Invalid pagination token")
    return int(since[1:])


def _directory_entry(room_id: str, joined: int, state: dict[str, str]) -> JsonDict | None:
    content = {t: jsonutil.loads(j).get("content", {}) for t, j in state.items()}
    join_rule = content.get("m.room.join_rules", {}).get("join_rule", "invite")
    entry: JsonDict = {
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": content.get("m.room.history_visibility", {}).get("history_visibility")
        == "world_readable",
        "guest_can_join": content.get("m.room.guest_access", {}).get("guest_access") == "can_join",
        "join_rule": join_rule,
    }
    for key, event_type, field in (
        ("name", "m.room.name", "name"),
        ("topic", "m.room.topic", "topic"),
        ("avatar_url", "m.room.avatar", "url"),
        ("canonical_alias", "m.room.canonical_alias", "alias"),
    ):
        value = content.get(event_type, {}).get(field)
        if isinstance(value, str) and value:
            entry[key] = value
    room_type = content.get("m.room.create", {}).get("type")
    if isinstance(room_type, str):
        entry["room_type"] = room_type
    return entry


def _matches(entry: JsonDict, term: str | None) -> bool:
    if not term:
        return True
    needle = term.casefold()
    return any(
        needle in str(entry.get(k, "")).casefold()
        for k in ("name", "topic", "canonical_alias", "room_id")
    )
