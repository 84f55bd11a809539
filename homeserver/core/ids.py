"""Matrix identifiers: ``str`` subclasses with a validating ``parse``.

They are distinct types for mypy and plain strings on the wire and in SQL.
"""

from __future__ import annotations

import re
from typing import Self

from homeserver.core.errors import Codes, MatrixError

MAX_ID_BYTES = 255  # spec, appendices: identifiers are at most 255 bytes including the sigil

# spec, appendices "Server name": hostname (IPv4, [IPv6] or DNS name) and an optional port.
_SERVER_NAME = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?$"
)
# spec, appendices "User Identifiers": the historical grammar is accepted for existing users;
# new localparts use the strict one (see ``is_valid_new_localpart``).
_HISTORICAL_LOCALPART = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
_NEW_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
_OPAQUE_ID = re.compile(r"^[\x21-\x7e]+$")


def is_valid_server_name(name: str) -> bool:
    return bool(_SERVER_NAME.match(name))


def is_valid_new_localpart(localpart: str) -> bool:
    return bool(_NEW_LOCALPART.match(localpart))


def _split(sigil: str, value: str, kind: str) -> tuple[str, str]:
    if not isinstance(value, str) or not value.startswith(sigil):
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid {kind}: must start with {sigil!r}")
    if len(value.encode()) > MAX_ID_BYTES:
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid {kind}: longer than {MAX_ID_BYTES} bytes")
    local, sep, server = value[1:].partition(":")
    if not sep or not local or not is_valid_server_name(server):
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid {kind}: {value!r}")
    return local, server


class UserID(str):
    """``@localpart:server``."""

    @classmethod
    def parse(cls, value: str) -> Self:
        local, _ = _split("@", value, "user ID")
        if not _HISTORICAL_LOCALPART.match(local):
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid user ID: {value!r}")
        return cls(value)

    @classmethod
    def of(cls, localpart: str, server_name: str) -> Self:
        return cls(f"@{localpart}:{server_name}")

    @property
    def localpart(self) -> str:
        return self[1:].partition(":")[0]

    @property
    def server_name(self) -> str:
        return self.partition(":")[2]


class RoomID(str):
    """``!opaque:server`` (room versions 1-11) or ``!hash`` (room version 12, no server)."""

    @classmethod
    def parse(cls, value: str) -> Self:
        if not isinstance(value, str) or not value.startswith("!") or len(value) < 2:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid room ID: {value!r}")
        if len(value.encode()) > MAX_ID_BYTES or not _OPAQUE_ID.match(value):
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid room ID: {value!r}")
        return cls(value)


class EventID(str):
    """``$opaque`` (room version 4+: the URL-safe base64 reference hash)."""

    @classmethod
    def parse(cls, value: str) -> Self:
        if not isinstance(value, str) or not value.startswith("$") or len(value) < 2:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid event ID: {value!r}")
        if len(value.encode()) > MAX_ID_BYTES or not _OPAQUE_ID.match(value):
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid event ID: {value!r}")
        return cls(value)


class RoomAlias(str):
    """``#alias:server``."""

    @classmethod
    def parse(cls, value: str) -> Self:
        local, _ = _split("#", value, "room alias")
        if any(c in local for c in ":\x00") or local.strip() != local:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid room alias: {value!r}")
        return cls(value)

    @property
    def localpart(self) -> str:
        return self[1:].partition(":")[0]

    @property
    def server_name(self) -> str:
        return self.partition(":")[2]
