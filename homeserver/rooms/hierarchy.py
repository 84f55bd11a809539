"""The space hierarchy (spec: "Spaces", GET /rooms/{roomId}/hierarchy): a depth-first walk
of ``m.space.child`` events from a space, listing the rooms the user may look at.

Only rooms this server knows are walked; a child it does not know is left out (asking the
servers of its ``via`` is the federation part, not built yet).

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

import orjson

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.types import JsonDict
from homeserver.rooms.summary import RoomSummaryService
from homeserver.storage.events import EventStore, StoredEvent

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


class SpaceHierarchyService:
    def __init__(self, events: EventStore, summaries: RoomSummaryService) -> None:
        self._events = events
        self._summaries = summaries

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
        root = await self._entry(user_id, room_id, suggested_only)
        if root is None:
            raise MatrixError(Codes.FORBIDDEN, "You may not view this room")
        rooms: list[JsonDict] = []
        listed = 0
        walked = 0
        seen: set[str] = set()
        # The walk's stack: (room, depth, its entry when already read); last is next.
        stack: list[tuple[str, int, JsonDict | None]] = [(room_id, 0, root)]
        while stack and len(rooms) < page and walked < MAX_ROOMS_WALKED:
            current, at, entry = stack.pop()
            if current in seen:
                continue  # a cycle, or a room under two spaces: listed once
            seen.add(current)
            if listed >= skip:
                walked += 1
            if entry is None:
                entry = await self._entry(user_id, current, suggested_only)
                if entry is None:
                    continue  # unknown here, or not for this user: its children neither
            listed += 1
            if listed > skip:
                rooms.append(entry)
            if at < depth:
                children = [c["state_key"] for c in entry["children_state"]]
                stack.extend((c, at + 1, None) for c in reversed(children) if c not in seen)
        out: JsonDict = {"rooms": rooms}
        if any(c not in seen for c, _, _ in stack):
            out["next_batch"] = walk_token(Walk(room_id, suggested_only, depth, listed))
        return out

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

    async def _children(self, room_id: str, suggested_only: bool) -> list[StoredEvent]:
        ids = await self._events.get_current_state_ids(room_id, (SPACE_CHILD,))
        loaded = await self._events.get_events(ids.values())
        children = [
            e
            for e in loaded.values()
            if _is_child(e) and (not suggested_only or e.content.get("suggested") is True)
        ]
        return sorted(children, key=child_sort_key)
