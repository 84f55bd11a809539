"""Matrix identifiers: ``str`` subclasses with a validating ``parse``.

They are distinct types for mypy and plain strings on the wire and in SQL.
"""

from __future__ import annotations

import re
from typing import Self

from homeserver.core.errors import Codes, MatrixError

MAX_ID_BYTES = 255  # spec, appendices: identifiers are at most 255 bytes including the sigil

# Every pattern is used with ``fullmatch``: ``$`` would also match before a final newline.
# spec, appendices "Server name": hostname (IPv4, [IPv6] or DNS name) and an optional port.
_SERVER_NAME = re.compile(
    r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?",
    re.ASCII,
)
# spec, appendices "User Identifiers": the historical grammar (printable ASCII but ``:``) is
# accepted on receipt, for existing users; new localparts use the current one.
_HISTORICAL_LOCALPART = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_NEW_LOCALPART = re.compile(r"[a-z0-9._=\-/+]+")
# Room IDs (``!opaque:server`` up to room version 11, ``!hash`` in 12) and event IDs
# (``$hash`` from room version 4, ``$opaque:server`` before): printable ASCII, no space.
_OPAQUE_ID = re.compile(r"[\x21-\x7e]+")
# spec, appendices "Room Aliases": any non-surrogate code point but ``:`` and NUL on receipt.
_ALIAS_LOCALPART = re.compile(r"[^:\x00\ud800-\udfff]+")
# A new alias (one we create) also keeps out whitespace and control characters, which would
# make it ambiguous to read and to copy.
_NEW_ALIAS_LOCALPART = re.compile(r"[^:\s\x00-\x1f\x7f-\x9f\ud800-\udfff]+")
# Device IDs have no grammar in the spec ("opaque"); ours and those clients choose are kept
# to printable ASCII without space, so that they are safe in paths, logs and keys, and
# identifier-sized.
_DEVICE_ID = re.compile(r"[\x21-\x7e]+")
MAX_DEVICE_ID_BYTES = 255


def is_valid_server_name(name: str) -> bool:
    return isinstance(name, str) and _SERVER_NAME.fullmatch(name) is not None


def is_valid_new_localpart(localpart: str) -> bool:
    return isinstance(localpart, str) and _NEW_LOCALPART.fullmatch(localpart) is not None


def is_valid_new_alias_localpart(localpart: str) -> bool:
    return isinstance(localpart, str) and _NEW_ALIAS_LOCALPART.fullmatch(localpart) is not None


def is_valid_device_id(device_id: str) -> bool:
    return (
        isinstance(device_id, str)
        and _DEVICE_ID.fullmatch(device_id) is not None
        and len(device_id) <= MAX_DEVICE_ID_BYTES
    )


def _split(sigil: str, value: str, kind: str) -> tuple[str, str]:
    if not isinstance(value, str) or not value.startswith(sigil):
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid {kind}: must start with {sigil!r}")
    if len(value.encode(errors="surrogatepass")) > MAX_ID_BYTES:
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
        if _HISTORICAL_LOCALPART.fullmatch(local) is None:
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
        if _OPAQUE_ID.fullmatch(value) is None or len(value) > MAX_ID_BYTES:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid room ID: {value!r}")
        _, sep, server = value.partition(":")
        if sep and not is_valid_server_name(server):
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid room ID: {value!r}")
        return cls(value)


class EventID(str):
    """``$opaque`` (room version 4+: the URL-safe base64 reference hash)."""

    @classmethod
    def parse(cls, value: str) -> Self:
        if not isinstance(value, str) or not value.startswith("$") or len(value) < 2:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid event ID: {value!r}")
        if _OPAQUE_ID.fullmatch(value) is None or len(value) > MAX_ID_BYTES:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid event ID: {value!r}")
        return cls(value)


class RoomAlias(str):
    """``#alias:server``."""

    @classmethod
    def parse(cls, value: str) -> Self:
        local, _ = _split("#", value, "room alias")
        if _ALIAS_LOCALPART.fullmatch(local) is None or local.strip() != local:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid room alias: {value!r}")
        return cls(value)

    @property
    def localpart(self) -> str:
        return self[1:].partition(":")[0]

    @property
    def server_name(self) -> str:
        return self.partition(":")[2]
