"""Profiles: display names and avatars of local users."""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID, is_valid_server_name
from homeserver.core.types import JsonDict, Requester
from homeserver.federation.client import FederationError
from homeserver.storage.accounts import AccountStore, Profile

logger = logging.getLogger(__name__)

DISPLAYNAME = "displayname"
AVATAR_URL = "avatar_url"
FIELDS = (DISPLAYNAME, AVATAR_URL)
MAX_DISPLAYNAME_CHARS = 256
MAX_AVATAR_URL_CHARS = 1000  # an mxc URI is short; this only bounds what a member event carries
# spec, content repository: mxc://<server-name>/<media-id>, media IDs are [A-Za-z0-9_-]+.
_MXC = re.compile(r"^mxc://([^/]+)/([A-Za-z0-9_-]+)\Z")
# spec, profile: any other key follows the common namespaced identifier grammar.
_KEY_NAME = re.compile(r"^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)\Z")


class ProfileListener(Protocol):
    """Who shows profiles elsewhere: room memberships carry the display name and avatar."""

    async def update_profile_everywhere(self, user_id: UserID) -> None: ...


class RemoteProfiles(Protocol):
    """Asks a remote user's server for their profile (federation /query/profile)."""

    async def query_profile(self, user_id: UserID) -> Any:
        """The remote answer as it came; FederationError when there is none."""
        ...


class LocalProfiles(Protocol):
    """Local users' profiles: the account store, or what asks application services about
    unknown users of their namespaces first."""

    async def get_profile(self, user_id: UserID) -> Profile | None: ...


def is_valid_mxc_uri(uri: str) -> bool:
    match = _MXC.match(uri)
    return match is not None and is_valid_server_name(match.group(1))


class ProfileService:
    def __init__(
        self,
        store: AccountStore,
        server_name: str,
        listener: ProfileListener,
        remote: RemoteProfiles | None = None,
        local: LocalProfiles | None = None,
    ) -> None:
        self._store = store
        self._local: LocalProfiles = local or store
        self._server_name = server_name
        # A changed profile goes into member events.
        self._listener = listener
        # None (federation off): a remote user's profile is not found.
        self._remote = remote

    async def get_profile(self, user_id: UserID) -> Profile | None:
        """The profile of a local user; None for an unknown or remote one."""
        if user_id.server_name != self._server_name:
            return None
        return await self._local.get_profile(user_id)

    async def get_profile_json(self, user_id: UserID) -> JsonDict:
        """spec: GET /profile/{userId}: the fields that are set; 404 for an unknown user.
        A remote user's profile is asked of their server (/query/profile)."""
        if user_id.server_name != self._server_name and self._remote is not None:
            return await self._remote_profile(self._remote, user_id)
        profile = await self.get_profile(user_id)
        if profile is None:
            raise MatrixError(Codes.NOT_FOUND, "Profile not found")
        return _profile_json(profile)

    async def get_field(self, user_id: UserID, key: str) -> JsonDict:
        self._check_key(key)
        fields = await self.get_profile_json(user_id)
        if key not in fields:
            raise MatrixError(Codes.NOT_FOUND, f"The user has no {key}")
        return {key: fields[key]}

    async def set_field(
        self, requester: Requester, user_id: UserID, key: str, value: object
    ) -> None:
        """Set ``displayname`` or ``avatar_url``; an empty string clears the field."""
        self._check_key(key)
        if requester.user_id != user_id:
            raise MatrixError(Codes.FORBIDDEN, "Cannot change another user's profile")
        if key not in FIELDS:
            raise MatrixError(Codes.FORBIDDEN, f"Profile field {key} cannot be changed here")
        if not isinstance(value, str):
            raise MatrixError(Codes.BAD_JSON, f"{key} must be a string")
        if key == DISPLAYNAME and len(value) > MAX_DISPLAYNAME_CHARS:
            raise MatrixError(
                Codes.INVALID_PARAM,
                f"displayname is longer than {MAX_DISPLAYNAME_CHARS} characters",
            )
        if (
            key == AVATAR_URL
            and value
            and (len(value) > MAX_AVATAR_URL_CHARS or not is_valid_mxc_uri(value))
        ):
            raise MatrixError(Codes.INVALID_PARAM, "avatar_url must be an mxc:// URI")
        await self._set(user_id, key, value or None)

    async def delete_field(self, requester: Requester, user_id: UserID, key: str) -> None:
        """spec v1.16: DELETE removes the field; one that is not set is fine."""
        self._check_key(key)
        if requester.user_id != user_id:
            raise MatrixError(Codes.FORBIDDEN, "Cannot change another user's profile")
        if key not in FIELDS:
            raise MatrixError(Codes.FORBIDDEN, f"Profile field {key} cannot be changed here")
        await self._set(user_id, key, None)

    async def _set(self, user_id: UserID, key: str, value: str | None) -> None:
        if await self.get_profile(user_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Profile not found")
        await self._store.set_profile_field(user_id, key, value)
        await self._listener.update_profile_everywhere(user_id)

    async def _remote_profile(self, remote: RemoteProfiles, user_id: UserID) -> JsonDict:
        try:
            answer = await remote.query_profile(user_id)
        except FederationError as e:
            # The remote error is not passed on as ours: a 404 there is "no such profile",
            # anything else is a server we could not get an answer from.
            if e.status == 404:
                raise MatrixError(Codes.NOT_FOUND, "Profile not found") from None
            logger.info("remote profile query failed", extra={"server": user_id.server_name})
            raise MatrixError(
                Codes.UNKNOWN, "Could not get the profile from the user's server", status=502
            ) from None
        # Only fields we could have stored ourselves, so nothing odd reaches a client.
        fields: JsonDict = {}
        if isinstance(answer, dict):
            name = answer.get(DISPLAYNAME)
            if isinstance(name, str) and len(name) <= MAX_DISPLAYNAME_CHARS:
                fields[DISPLAYNAME] = name
            avatar = answer.get(AVATAR_URL)
            if (
                isinstance(avatar, str)
                and len(avatar) <= MAX_AVATAR_URL_CHARS
                and is_valid_mxc_uri(avatar)
            ):
                fields[AVATAR_URL] = avatar
        return fields

    def _check_key(self, key: str) -> None:
        if not _KEY_NAME.match(key) or len(key.encode()) > 255:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid profile key {key!r}")


def _profile_json(profile: Profile) -> JsonDict:
    fields: JsonDict = {}
    if profile.displayname is not None:
        fields[DISPLAYNAME] = profile.displayname
    if profile.avatar_url is not None:
        fields[AVATAR_URL] = profile.avatar_url
    return fields
