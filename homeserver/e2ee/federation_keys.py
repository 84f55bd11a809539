"""Our users' end-to-end keys as other servers see them (federation /user/keys/query,
/user/keys/claim, /user/devices): only what every user may see, so no user-signing key,
no signature a user made of another user's keys, and no device display name (they stay on
this server, as Synapse keeps them by default)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict
from homeserver.e2ee.device_lists import DeviceListService
from homeserver.e2ee.keys import MASTER, SELF_SIGNING, E2eKeyService, check_name

ANY_SERVER = None  # the viewer that is no user: only what every user may see


class FederationKeyService:
    def __init__(
        self, keys: E2eKeyService, device_lists: DeviceListService, server_name: str
    ) -> None:
        self._keys = keys
        self._device_lists = device_lists
        self._server_name = server_name

    def _ours(self, user_id: str) -> bool:
        return UserID.parse(user_id).server_name == self._server_name

    async def query_keys(self, wanted: Mapping[str, Sequence[str]]) -> JsonDict:
        """POST /user/keys/query: our users' device and cross-signing keys."""
        local = {
            user_id: [check_name(d, "device ID") for d in device_ids]
            for user_id, device_ids in wanted.items()
            if self._ours(user_id)
        }
        return await self._keys.local_keys(ANY_SERVER, local, display_names=False)

    async def claim_keys(self, wanted: Mapping[str, Mapping[str, str]]) -> JsonDict:
        """POST /user/keys/claim: one-time keys of our users."""
        local = {user_id: by_device for user_id, by_device in wanted.items() if self._ours(user_id)}
        return {"one_time_keys": (await self._keys.claim_keys(local))["one_time_keys"]}

    async def user_devices(self, user_id: UserID) -> JsonDict:
        """GET /user/devices/{userId}: the devices of one of our users that have keys, with
        the user's public cross-signing keys."""
        if user_id.server_name != self._server_name:
            raise MatrixError(Codes.INVALID_PARAM, "The user is not on this server")
        # The stream ID first: a change after it is announced with a later one.
        stream_id = await self._device_lists.stream_id(user_id)
        found = await self._keys.local_keys(ANY_SERVER, {user_id: []}, display_names=False)
        response: JsonDict = {
            "user_id": user_id,
            "stream_id": stream_id,
            "devices": [
                {"device_id": device_id, "keys": keys}
                for device_id, keys in sorted(found["device_keys"][user_id].items())
            ],
        }
        for key_type in (MASTER, SELF_SIGNING):
            key = found.get(f"{key_type}_keys", {}).get(user_id)
            if key is not None:
                response[f"{key_type}_key"] = key
        return response
