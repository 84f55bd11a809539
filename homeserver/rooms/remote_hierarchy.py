"""Other servers' spaces, for our clients' ``/hierarchy``: ``GET /_matrix/federation/v1/
hierarchy/{roomId}`` asked of the servers a space's ``m.space.child`` event names in ``via``.

A remote answer is another server's word about its rooms: each summary is rebuilt field by
field with the types the spec gives (anything else is left out, a room that cannot be read
is dropped), and answers are kept a few minutes, as the spec asks, since the stateless
pagination of ``/hierarchy`` walks the tree again for each page.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import cachetools

from homeserver.core.clock import Clock
from homeserver.core.types import JsonDict

logger = logging.getLogger(__name__)

PATH = "/_matrix/federation/v1/hierarchy/"
# Synapse keeps a remote hierarchy five minutes; a space nobody answered for, one.
CACHE_MS = 5 * 60 * 1000
FAILURE_CACHE_MS = 60 * 1000
CACHE_ENTRIES = 1024
# Servers of one child's ``via`` asked before giving up on it.
MAX_SERVERS = 3
# An answer bigger than this is not one space's summary.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# Children kept of one answer (the walk lists at most MAX_ROOMS_WALKED rooms anyway).
MAX_CHILDREN = 1000
# Values a summary keeps: identifiers and texts within the limits of events.
MAX_TEXT = 65536
MAX_VIA = 50
_TEXTS = (
    "name",
    "topic",
    "avatar_url",
    "canonical_alias",
    "join_rule",
    "room_type",
    "encryption",
    "room_version",
)


class HierarchyRequests(Protocol):
    """What of ``FederationClient`` this needs."""

    async def get_json(
        self,
        destination: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        max_bytes: int = ...,
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class RemoteSpace:
    """One server's answer: the room (with its ``children_state``), the summaries of the
    children it could give, and those it says nobody of ours could see."""

    room: JsonDict
    children: dict[str, JsonDict]
    inaccessible: frozenset[str]


def _is_room_id(value: object) -> bool:
    return isinstance(value, str) and value.startswith("!") and 1 < len(value.encode()) <= 255


def _is_int(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**53


def clean_summary(raw: object) -> JsonDict | None:
    """A room summary of another server, with the spec's fields and types only; None when
    it has no room ID."""
    if not isinstance(raw, dict) or not _is_room_id(raw.get("room_id")):
        return None
    members = raw.get("num_joined_members")
    out: JsonDict = {
        "room_id": raw["room_id"],
        "num_joined_members": members if _is_int(members) else 0,
        "world_readable": raw.get("world_readable") is True,
        "guest_can_join": raw.get("guest_can_join") is True,
        # spec, room summaries: a room without a join rule is public.
        "join_rule": "public",
    }
    for key in _TEXTS:
        value = raw.get(key)
        if isinstance(value, str) and len(value) <= MAX_TEXT:
            out[key] = value
    allowed = raw.get("allowed_room_ids")
    if isinstance(allowed, list):
        out["allowed_room_ids"] = [a for a in allowed if _is_room_id(a)][:MAX_VIA]
    return out


def clean_child(raw: object) -> JsonDict | None:
    """An ``m.space.child`` stripped event with its ``origin_server_ts``, when it is one
    (spec: a child without a non-empty ``via`` is not a child)."""
    if not isinstance(raw, dict) or raw.get("type") != "m.space.child":
        return None
    content, sender, ts = raw.get("content"), raw.get("sender"), raw.get("origin_server_ts")
    if not _is_room_id(raw.get("state_key")) or not isinstance(content, dict):
        return None
    via = content.get("via")
    if not isinstance(via, list) or not via or not all(isinstance(v, str) for v in via):
        return None
    if not isinstance(sender, str) or not _is_int(ts):
        return None
    return {
        "type": "m.space.child",
        "state_key": raw["state_key"],
        "content": content,
        "sender": sender,
        "origin_server_ts": ts,
    }


def parse_answer(room_id: str, answer: object) -> RemoteSpace | None:
    if not isinstance(answer, dict):
        return None
    room = clean_summary(answer.get("room"))
    if room is None or room["room_id"] != room_id:
        return None
    raw_children = answer.get("room", {}).get("children_state")
    children_state = [
        c
        for c in (clean_child(c) for c in (raw_children if isinstance(raw_children, list) else []))
        if c is not None
    ][:MAX_CHILDREN]
    room["children_state"] = children_state
    summaries: dict[str, JsonDict] = {}
    raw_summaries = answer.get("children")
    for raw in (raw_summaries if isinstance(raw_summaries, list) else [])[:MAX_CHILDREN]:
        summary = clean_summary(raw)
        if summary is not None:
            summaries.setdefault(summary["room_id"], summary)
    raw_hidden = answer.get("inaccessible_children")
    hidden = raw_hidden if isinstance(raw_hidden, list) else []
    return RemoteSpace(
        room, summaries, frozenset(h for h in hidden[:MAX_CHILDREN] if _is_room_id(h))
    )


class RemoteHierarchies:
    def __init__(
        self,
        client: HierarchyRequests,
        clock: Clock,
        failure: type[Exception],
        server_name: str,
    ) -> None:
        self._client = client
        self._clock = clock
        # The client's error type (FederationError), given so that rooms/ need not import
        # federation.
        self._failure = failure
        self._server_name = server_name
        self._cache: cachetools.LRUCache[tuple[str, bool], tuple[int, RemoteSpace | None]] = (
            cachetools.LRUCache(CACHE_ENTRIES)
        )

    async def space(
        self, room_id: str, servers: Sequence[str], suggested_only: bool
    ) -> RemoteSpace | None:
        """The space as the first of ``servers`` that answers gives it; None when none
        does (or none of them is another server)."""
        key = (room_id, suggested_only)
        now = self._clock.now_ms()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        candidates = [s for s in dict.fromkeys(servers) if s != self._server_name]
        if not candidates:
            return None
        found: RemoteSpace | None = None
        for server in candidates[:MAX_SERVERS]:
            try:
                answer = await self._client.get_json(
                    server,
                    PATH + quote(room_id, safe=""),
                    query={"suggested_only": "true" if suggested_only else "false"},
                    max_bytes=MAX_ANSWER_BYTES,
                )
            except self._failure as e:
                logger.info(
                    "remote hierarchy failed",
                    extra={"room_id": room_id, "server": server, "error": str(e)},
                )
                continue
            found = parse_answer(room_id, answer)
            if found is not None:
                break
            logger.info("remote hierarchy malformed", extra={"room_id": room_id, "server": server})
        self._cache[key] = (now + (CACHE_MS if found is not None else FAILURE_CACHE_MS), found)
        return found
