"""What a guest's access token may call: the endpoints the spec lists for guests (Client-Server
API, "Guest access"), and a few that every client needs to start (whoami, capabilities,
filters, logout). Anything else answers 403 ``M_GUEST_ACCESS_FORBIDDEN``."""

from __future__ import annotations

import re

_ROOM = r"/rooms/[^/]+"
# (method, path after /_matrix/client/<version>)
_ALLOWED: tuple[tuple[str, str], ...] = (
    ("GET", _ROOM + r"/state"),
    ("GET", _ROOM + r"/state/[^/]+(/.*)?"),
    ("GET", _ROOM + r"/context/[^/]+"),
    ("GET", _ROOM + r"/event/[^/]+"),
    ("GET", _ROOM + r"/messages"),
    ("GET", _ROOM + r"/members"),
    ("GET", _ROOM + r"/joined_members"),
    ("GET", _ROOM + r"/initialSync"),
    ("GET", r"/sync"),
    ("GET", r"/events"),
    ("GET", r"/events/[^/]+"),
    ("PUT", _ROOM + r"/send/m\.room\.message/[^/]+"),
    ("PUT", r"/presence/[^/]+/status"),
    ("GET", r"/presence/[^/]+/status"),
    ("GET", r"/profile/[^/]+(/displayname|/avatar_url)?"),
    ("PUT", r"/profile/[^/]+/displayname"),
    ("POST", _ROOM + r"/join"),
    ("POST", r"/join/[^/]+"),
    ("POST", _ROOM + r"/leave"),
    ("PUT", _ROOM + r"/typing/[^/]+"),
    ("POST", _ROOM + r"/receipt/[^/]+/[^/]+"),
    ("POST", _ROOM + r"/read_markers"),
    ("PUT", r"/sendToDevice/[^/]+/[^/]+"),
    ("GET", r"/devices(/[^/]+)?"),
    ("PUT", r"/devices/[^/]+"),
    ("POST", r"/keys/(upload|query|claim)"),
    ("GET", r"/keys/changes"),
    ("GET", r"/account/whoami"),
    ("GET", r"/voip/turnServer"),
    ("GET", r"/capabilities"),
    # Finding a room to join: the public directory and aliases (read only).
    ("GET", r"/publicRooms"),
    ("POST", r"/publicRooms"),
    ("GET", r"/directory/room/[^/]+"),
    ("POST", r"/user/[^/]+/filter"),
    ("GET", r"/user/[^/]+/filter/[^/]+"),
    ("GET", r"/pushrules/.*"),
    ("POST", r"/logout"),
)
_PREFIX = re.compile(r"^/_matrix/client/(?:v\d+|r0|unstable)(/.*)$")
_PATTERNS = tuple((method, re.compile(path)) for method, path in _ALLOWED)


def guest_may_call(method: str, path: str) -> bool:
    """Whether a guest may make this request (``path`` as the client sent it)."""
    match = _PREFIX.match(path)
    if match is None:
        return False
    rest = match.group(1)
    return any(m == method and p.fullmatch(rest) for m, p in _PATTERNS)
