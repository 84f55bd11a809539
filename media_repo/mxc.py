"""``mxc://<server-name>/<media-id>`` URIs, checked strictly.

spec, "Matrix Content (mxc://) URIs": the server name is a valid server name and the media ID
is opaque but limited to ``[A-Za-z0-9_-]``; anything else is refused rather than normalised.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Self

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import is_valid_server_name

MAX_MEDIA_ID_CHARS = 255
_MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]+\Z")
# 24 URL-safe characters: 144 random bits, so media IDs cannot be guessed.
MEDIA_ID_BYTES = 18


def is_valid_media_id(media_id: str) -> bool:
    return 0 < len(media_id) <= MAX_MEDIA_ID_CHARS and bool(_MEDIA_ID.match(media_id))


def new_media_id() -> str:
    return secrets.token_urlsafe(MEDIA_ID_BYTES)


@dataclass(frozen=True, slots=True)
class MxcUri:
    server_name: str
    media_id: str

    @classmethod
    def of(cls, server_name: str, media_id: str) -> Self:
        """From the two path segments of a media endpoint; ``M_INVALID_PARAM`` if malformed."""
        if not is_valid_server_name(server_name):
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid server name: {server_name!r}")
        if not is_valid_media_id(media_id):
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid media ID: {media_id!r}")
        return cls(server_name, media_id)

    @classmethod
    def parse(cls, uri: str) -> Self:
        if not isinstance(uri, str) or not uri.startswith("mxc://"):
            raise MatrixError(Codes.INVALID_PARAM, "Invalid content URI: must start with mxc://")
        server_name, sep, media_id = uri[len("mxc://") :].partition("/")
        if not sep:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid content URI: {uri!r}")
        return cls.of(server_name, media_id)

    def __str__(self) -> str:
        return f"mxc://{self.server_name}/{self.media_id}"
