"""The space hierarchy (spec: "Spaces", GET /rooms/{roomId}/hierarchy): a depth-first walk
of ``m.space.child`` events from a space, listing the rooms the user may look at.

A room this server is in is read here; another (a child, or a root we only know by its ID)
is asked of the servers its ``m.space.child`` names in ``via`` (the room ID's server for the
root) through ``RemoteHierarchies``, whose answer also carries the summaries of the space's
children, so that a child that is no space needs no request of its own. The same service
answers other servers' ``/hierarchy`` (federation): the space and its children that the
asking server could peek into or join, without pagination.

Pagination is stateless: ``from`` names the walk (its room, ``suggested_only`` and
``max_depth``) and how many rooms earlier pages listed; the next page walks again and
skips them. The walk is deterministic (children in the spec's order), so an unchanged tree
pages without gaps or repeats; the token is bound to the walk it came from.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.types import JsonDict
from homeserver.rooms.remote_hierarchy import RemoteHierarchies, RemoteSpace
from homeserver.rooms.summary import RoomSummaryService
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.rooms import RoomStore

SPACE_CHILD = "m.space.child"
SPACE = "m.space"
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
DEFAULT_MAX_DEPTH = 10
MAX_MAX_DEPTH = 10
# Rooms looked at in one request past those of earlier pages (inaccessible ones included):
# a page of a huge tree the user may mostly not see ends there, with a token to read on.
MAX_ROOMS_WALKED = 1000
# spec: an order is at most 50 characters of printable ASCII (0x20 to 0x7E).
_MAX_ORDER = 50
# Children of one space another server's /hierarchy summarises (as Synapse).
MAX_FEDERATION_CHILDREN = 50
# Join rules under which anyone may look at a room before joining (spec: room summary).
_OPEN_RULES = ("public", "knock", "knock_restricted")


@dataclass(frozen=True, slots=True)
class Walk:
    """What a pagination token names: the walk, and how far earlier pages got."""

    room_id: str
    suggested_only: bool
    max_depth: int
    listed: int


def walk_token(walk: Walk) -> str:
    raw = orjson.dumps([walk.room_id, walk.suggested_only, walk.max_depth, walk.listed])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_walk_token(token: str) -> Walk:
    """M_INVALID_PARAM for anything that is not a token of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        room_id, suggested_only, max_depth, listed = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise MatrixError(Codes.INVALID_PARAM, "Unknown pagination token") from None
    if (
        not isinstance(room_id, str)
        or not isinstance(suggested_only, bool)
        or type(max_depth) is not int
        or type(listed) is not int
        or listed < 1
        or not 0 <= max_depth <= MAX_MAX_DEPTH
    ):
        raise MatrixError(Codes.INVALID_PARAM, "Unknown pagination token")
    return Walk(room_id, suggested_only, max_depth, listed)


def valid_order(value: object) -> str | None:
    """A child's ``order``, if valid (spec: "Ordering of children within a space")."""
    if (
        isinstance(value, str)
        and len(value) <= _MAX_ORDER
        and all(0x20 <= ord(c) <= 0x7E for c in value)
    ):
        return value
    return None


def child_sort_key(event: StoredEvent) -> tuple[int, str, int, str]:
    """Children with a valid ``order`` first, by it; then by the child event's
    ``origin_server_ts``; then by room ID (spec: "Ordering of children within a space")."""
    order = valid_order(event.content.get("order"))
    return (
        0 if order is not None else 1,
        order or "",
        event.origin_server_ts,
        event.state_key or "",
    )


def _is_child(event: StoredEvent) -> bool:
    """spec: a child without ``via``, or with one that is not a non-empty list, is ignored."""
    via = event.content.get("via")
    return (
        event.state_key is not None
        and event.state_key.startswith("!")
        and isinstance(via, list)
        and len(via) > 0
        and all(isinstance(v, str) for v in via)
    )


class JoinedServers(Protocol):
    """Whether a server has a user joined to a room (``FederationReads``)."""

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool: ...


@dataclass(slots=True)
class _Step:
    """A room the walk is to look at: its depth, the servers to ask when it is not ours,
    and its summary when it is already known (the root's, or a remote parent's answer)."""

    room_id: str
    depth: int
    via: tuple[str, ...] = ()
    entry: JsonDict | None = None
    remote_summary: JsonDict | None = None


def _remote_child_key(child: JsonDict) -> tuple[int, str, int, str]:
    """``child_sort_key`` for another server's ``m.space.child`` events."""
    order = valid_order(child["content"].get("order"))
    return (
        0 if order is not None else 1,
        order or "",
        child["origin_server_ts"],
        child["state_key"],
    )


def _child_via(child: JsonDict) -> tuple[str, ...]:
    via = child.get("content", {}).get("via")
    return tuple(v for v in via if isinstance(v, str)) if isinstance(via, list) else ()


def _room_server(room_id: str) -> tuple[str, ...]:
    """The server a room ID names (none from room version 12)."""
    _, _, server = room_id.partition(":")
    return (server,) if server else ()


class SpaceHierarchyService:
    def __init__(
        self,
        events: EventStore,
        summaries: RoomSummaryService,
        rooms: RoomStore,
        joined: JoinedServers,
        server_name: str,
        remote: RemoteHierarchies | None = None,
    ) -> None:
        self._events = events
        self._summaries = summaries
        self._rooms = rooms
        self._joined = joined
        self._server_name = server_name
        self._remote = remote

    # --- our clients' /hierarchy ---------------------------------------------------------------

    async def hierarchy(
        self,
        user_id: UserID,
        room_id: RoomID,
        *,
        suggested_only: bool,
        max_depth: int | None,
        limit: int | None,
        from_token: str | None,
    ) -> JsonDict:
        depth = min(max_depth if max_depth is not None else DEFAULT_MAX_DEPTH, MAX_MAX_DEPTH)
        page = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        skip = 0
        if from_token is not None:
            walk = parse_walk_token(from_token)
            if walk.room_id != room_id:
                raise MatrixError(Codes.INVALID_PARAM, "The token is for another room")
            if walk.suggested_only != suggested_only or (
                max_depth is not None and walk.max_depth != depth
            ):
                raise MatrixError(
                    Codes.INVALID_PARAM,
                    "suggested_only and max_depth cannot change on paginated requests",
                )
            depth = walk.max_depth
            skip = walk.listed
        root = _Step(room_id, 0, _room_server(room_id))
        root.entry, root_space = await self._look(user_id, root, suggested_only, depth)
        if root.entry is None:
            raise MatrixError(Codes.FORBIDDEN, "You may not view this room")
        rooms: list[JsonDict] = []
        listed = 0
        walked = 0
        seen: set[str] = set()
        # The walk's stack, last is next; a remote space's answer for its children.
        stack: list[tuple[_Step, RemoteSpace | None]] = [(root, root_space)]
        while stack and len(rooms) < page and walked < MAX_ROOMS_WALKED:
            step, space = stack.pop()
            if step.room_id in seen:
                continue  # a cycle, or a room under two spaces: listed once
            seen.add(step.room_id)
            if listed >= skip:
                walked += 1
            if step.entry is None:
                step.entry, space = await self._look(user_id, step, suggested_only, depth)
                if step.entry is None:
                    continue  # unknown, or not for this user: its children neither
            entry = step.entry
            listed += 1
            if listed > skip:
                rooms.append(entry)
            if step.depth < depth:
                children = [
                    _Step(
                        c["state_key"],
                        step.depth + 1,
                        _child_via(c),
                        remote_summary=space.children.get(c["state_key"]) if space else None,
                    )
                    for c in entry["children_state"]
                    if not (space and c["state_key"] in space.inaccessible)
                ]
                stack.extend((c, None) for c in reversed(children) if c.room_id not in seen)
        out: JsonDict = {"rooms": rooms}
        if any(s.room_id not in seen for s, _ in stack):
            out["next_batch"] = walk_token(Walk(room_id, suggested_only, depth, listed))
        return out

    async def _look(
        self, user_id: UserID, step: _Step, suggested_only: bool, max_depth: int
    ) -> tuple[JsonDict | None, RemoteSpace | None]:
        """The room's entry for the user (None: unknown, or not for them), read here when
        this server is in the room, else asked of its ``via`` servers; and the remote
        answer it came from."""
        if self._remote is None or await self._joined.server_has_joined_member(
            step.room_id, self._server_name
        ):
            return await self._entry(user_id, step.room_id, suggested_only), None
        summary = step.remote_summary
        if summary is not None and (summary.get("room_type") != SPACE or step.depth >= max_depth):
            # A parent's answer summarised it, and its children are not wanted.
            entry: JsonDict | None = {**summary, "children_state": []}
            space = None
        else:
            space = await self._remote.space(step.room_id, step.via, suggested_only)
            if space is None:
                # Nobody answered: what this server knows of the room, if anything.
                return await self._entry(user_id, step.room_id, suggested_only), None
            entry = dict(space.room)
            children = entry["children_state"] if entry.get("room_type") == SPACE else []
            entry["children_state"] = sorted(
                (
                    c
                    for c in children
                    if not suggested_only or c["content"].get("suggested") is True
                ),
                key=_remote_child_key,
            )
        if entry is None or not await self._may_see_remote(user_id, entry):
            return None, None
        return entry, space

    async def _may_see_remote(self, user_id: UserID, entry: JsonDict) -> bool:
        """spec, /hierarchy: a room the user could peek into or join, or is in (as the
        summary of another server tells, and our memberships)."""
        if entry.get("join_rule") in _OPEN_RULES or entry.get("world_readable") is True:
            return True
        for allowed in entry.get("allowed_room_ids", []):
            m = await self._rooms.get_membership(allowed, user_id)
            if m is not None and m.membership == "join":
                return True
        m = await self._rooms.get_membership(entry["room_id"], user_id)
        return m is not None and m.membership in ("join", "invite")

    async def _entry(self, user_id: UserID, room_id: str, suggested_only: bool) -> JsonDict | None:
        """The room's chunk, or None if it is unknown here or the user may not see it."""
        try:
            summary = await self._summaries.summary(user_id, room_id)
        except MatrixError as error:
            if error.code == Codes.NOT_FOUND:
                return None
            raise
        # The summary's rules are the spec's for the hierarchy (joined or invited, public,
        # knockable, restricted with an allowed room joined, world_readable); a banned user
        # sees none of it.
        if summary.pop("membership", None) == "ban":
            return None
        return await self._with_children(summary, room_id, suggested_only)

    async def _with_children(
        self, summary: JsonDict, room_id: str, suggested_only: bool
    ) -> JsonDict:
        children: Sequence[StoredEvent] = []
        if summary.get("room_type") == SPACE:
            children = await self._children(room_id, suggested_only)
        summary["children_state"] = [
            {
                "type": SPACE_CHILD,
                "state_key": c.state_key,
                "content": c.content,
                "sender": c.sender,
                "origin_server_ts": c.origin_server_ts,
            }
            for c in children
        ]
        return summary

    # --- other servers' /hierarchy (federation) ------------------------------------------------

    async def federation_hierarchy(
        self, origin: str, room_id: RoomID, *, suggested_only: bool
    ) -> JsonDict:
        """GET /_matrix/federation/v1/hierarchy/{roomId}: the room with its children's
        events, and the summaries of the children the origin could peek into or join; 404
        when the room is unknown here or the origin could do neither."""
        root = await self._server_entry(origin, room_id)
        if root is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")
        await self._with_children(root, room_id, suggested_only)
        children: list[JsonDict] = []
        inaccessible: list[str] = []
        for child in root["children_state"][:MAX_FEDERATION_CHILDREN]:
            child_id = child["state_key"]
            entry = await self._server_entry(origin, child_id)
            if entry is not None:
                children.append(entry)
            elif await self._joined.server_has_joined_member(child_id, self._server_name):
                inaccessible.append(child_id)
            # A room this server is not in is left out: others may know more of it.
        return {"room": root, "children": children, "inaccessible_children": inaccessible}

    async def _server_entry(self, origin: str, room_id: str) -> JsonDict | None:
        """The summary of a room this server is in, if the origin could peek into it or join
        it: open join rules, world-readable history, a user of the origin joined or invited,
        or (restricted) joined to a room the rule allows."""
        if not await self._joined.server_has_joined_member(room_id, self._server_name):
            return None
        summary = await self._summaries.summary(None, room_id, check_access=False)
        if summary.get("join_rule") in _OPEN_RULES or summary.get("world_readable") is True:
            return summary
        if await self._joined.server_has_joined_member(room_id, origin):
            return summary
        suffix = ":" + origin
        invited = await self._rooms.get_room_members(room_id, ["invite"])
        if any(m.user_id.endswith(suffix) for m in invited):
            return summary
        for allowed in summary.get("allowed_room_ids", []):
            if await self._joined.server_has_joined_member(allowed, origin):
                return summary
        return None

    async def _children(self, room_id: str, suggested_only: bool) -> list[StoredEvent]:
        ids = await self._events.get_current_state_ids(room_id, (SPACE_CHILD,))
        loaded = await self._events.get_events(ids.values())
        children = [
            e
            for e in loaded.values()
            if _is_child(e) and (not suggested_only or e.content.get("suggested") is True)
        ]
        return sorted(children, key=child_sort_key)
