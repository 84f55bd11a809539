"""Server ACLs (``m.room.server_acl``): which servers may take part in a room, applied to
every room-scoped request another server makes (and, through ``RoomAcls.check``, to the PDUs
and EDUs of its transactions)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from cachetools import LRUCache

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict
from homeserver.federation.discovery import is_ip_literal
from homeserver.storage.events import EventStore

SERVER_ACL = "m.room.server_acl"


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    # Appendices, "Glob-style matching": * any run of characters, ? exactly one.
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _host(server_name: str) -> str:
    """The server name without its port (the ACL never considers ports)."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[: end + 1] if end != -1 else server_name
    return server_name.rsplit(":", 1)[0] if server_name.count(":") == 1 else server_name


def _patterns(value: object) -> Sequence[str]:
    if not isinstance(value, list):
        return ()
    return [p for p in value if isinstance(p, str)]


def acl_allows(content: JsonDict, server_name: str) -> bool:
    """The spec's order (``m.room.server_acl``): IP literals when refused, then ``deny``,
    then ``allow``; anything else is denied."""
    host = _host(server_name)
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if content.get("allow_ip_literals", True) is False and is_ip_literal(literal):
        return False
    if any(_glob(p).fullmatch(host) for p in _patterns(content.get("deny"))):
        return False
    return any(_glob(p).fullmatch(host) for p in _patterns(content.get("allow")))


class RoomAcls:
    """The current server ACL of each room, as a check on a server's request."""

    def __init__(self, events: EventStore) -> None:
        self._events = events
        # room -> (the ACL event's ID, its content); checked against current state each time
        # through a cheap read of the event ID only.
        self._contents: LRUCache[str, JsonDict] = LRUCache(maxsize=10_000)

    async def allows(self, room_id: str, server_name: str) -> bool:
        ids = await self._events.get_current_state_ids(room_id, types=(SERVER_ACL,))
        event_id = ids.get((SERVER_ACL, ""))
        if event_id is None:
            return True
        content = self._contents.get(event_id)
        if content is None:
            event = await self._events.get_event(event_id)
            if event is None:
                return True
            content = event.content
            self._contents[event_id] = content
        return acl_allows(content, server_name)

    async def check(self, room_id: str, server_name: str) -> None:
        """403 M_FORBIDDEN when the room's ACL denies ``server_name``."""
        if not await self.allows(room_id, server_name):
            raise MatrixError(Codes.FORBIDDEN, "Server is banned from this room by its ACL")
