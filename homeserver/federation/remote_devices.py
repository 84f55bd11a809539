"""The remote device list cache: remote users' devices and keys, kept current from their
servers' ``m.device_list_update`` and ``m.signing_key_update`` EDUs (spec, server-server
API "Device Management").

An update is applied when each of its ``prev_id`` is an update already applied (or it names
none); otherwise one was lost, and the user's whole list is fetched again from their server
(``GET /user/devices/{userId}``). Lists are kept only for users who share a room with one of
ours: nobody here asks about the others. A list whose resync failed is stale, and
``/keys/query`` asks the user's server instead of answering from it. A stale list is fetched
again on a timer (``run_resyncs``: 30 s after the failure, doubling up to an hour, per
user) and whenever one of our clients asks ``/keys/query`` about the user, as Synapse does
with its ``device_lists_remote_resync``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any, Protocol
from urllib.parse import quote

from homeserver.core.clock import Clock
from homeserver.core.errors import MatrixError
from homeserver.core.ids import UserID
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.types import JsonDict
from homeserver.storage.remote_devices import RemoteDevice, RemoteDeviceList, RemoteDeviceStore

logger = logging.getLogger(__name__)

# Bounds on what a server may tell us about one user.
MAX_DEVICES = 1000
MAX_DEVICE_ID_BYTES = 255
MAX_DISPLAY_NAME_BYTES = 1000
MAX_PREV_IDS = 100
CROSS_SIGNING = ("master", "self_signing")
# A stale list is fetched again this long after a failed resync, doubling at each failure.
RESYNC_FIRST_MS = 30_000
RESYNC_MAX_MS = 3600 * 1000
RESYNC_POLL_S = 30.0  # how often the timer looks for stale lists due
RESYNC_BATCH = 100  # stale lists looked at per round
RESYNCS_AT_ONCE = 8
# A /keys/query waits at most this for the resyncs of the stale lists it asks about, then
# asks the users' servers (/user/keys/query) as it would have without them.
QUERY_RESYNC_S = 5.0


def resync_backoff_ms(previous_ms: int) -> int:
    """The wait before the next resync of a list whose resync failed after ``previous_ms``
    (0: the first failure)."""
    return RESYNC_FIRST_MS if previous_ms <= 0 else min(RESYNC_MAX_MS, previous_ms * 2)


class DevicesFetch(Protocol):
    """Asks a server for one of its users' devices (``FederationClient.get_json``)."""

    async def get_json(self, destination: str, path: str) -> Any: ...


class DeviceListChanged(Protocol):
    """Tells our clients (``device_lists.changed`` in /sync) that a user's keys changed."""

    async def mark_changed(self, user_id: UserID) -> None: ...


class SharedRooms(Protocol):
    async def users_sharing_room(self, user_id: str) -> set[str]: ...


class BadEdu(ValueError):
    """An EDU that does not have the spec's shape: ignored, with a log line."""


def _str(content: JsonDict, key: str, *, optional: bool = False) -> str | None:
    value = content.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise BadEdu(f"{key} is not a string")
    return value


def _int(content: JsonDict, key: str) -> int:
    value = content.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadEdu(f"{key} is not a non-negative integer")
    return value


def check_device_keys(keys: Any, user_id: str, device_id: str) -> JsonDict:
    """Device keys as the spec's DeviceKeys: about this user and device."""
    if not isinstance(keys, dict):
        raise BadEdu("keys is not an object")
    if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
        raise BadEdu("keys are about another user or device")
    if not isinstance(keys.get("algorithms"), list) or not isinstance(keys.get("keys"), dict):
        raise BadEdu("keys lack algorithms or keys")
    _check_numbers(keys)
    return keys


def check_cross_signing_key(key: Any, user_id: str, usage: str) -> JsonDict:
    if not isinstance(key, dict) or key.get("user_id") != user_id:
        raise BadEdu("cross-signing key is not about this user")
    usages = key.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        raise BadEdu(f"cross-signing key is not a {usage} key")
    if not isinstance(key.get("keys"), dict) or not key["keys"]:
        raise BadEdu("cross-signing key has no keys")
    _check_numbers(key)
    return key


def _check_numbers(value: Any) -> None:
    try:
        check_json_numbers(value)
    except MatrixError as e:
        raise BadEdu(str(e)) from e


class RemoteDeviceLists:
    def __init__(
        self,
        store: RemoteDeviceStore,
        fetch: DevicesFetch,
        changed: DeviceListChanged,
        shared: SharedRooms,
        clock: Clock,
        server_name: str,
    ) -> None:
        self._store = store
        self._server_name = server_name
        self._fetch = fetch
        self._changed = changed
        self._shared = shared
        self._clock = clock
        # One update or resync of a user at a time on this worker (one per tracked user): an
        # update applied in the middle of a resync would be lost under the resync's list.
        self._locks: dict[str, asyncio.Lock] = {}

    async def _tracked(self, user_id: str) -> bool:
        """Whether one of our users shares a room with ``user_id``."""
        sharing = await self._shared.users_sharing_room(user_id)
        return any(UserID(u).server_name == self._server_name for u in sharing)

    async def on_device_list_update(self, origin: str, content: JsonDict) -> None:
        """An ``m.device_list_update`` EDU; BadEdu when it cannot be one from ``origin``."""
        user_id = _str(content, "user_id")
        assert user_id is not None
        try:
            user = UserID.parse(user_id)
        except MatrixError as e:
            raise BadEdu("user_id is not a user ID") from e
        if user.server_name != origin:
            raise BadEdu("update about another server's user")
        device_id = _str(content, "device_id")
        assert device_id is not None
        if len(device_id.encode()) > MAX_DEVICE_ID_BYTES:
            raise BadEdu("device_id is too long")
        stream_id = _int(content, "stream_id")
        prev_ids = content.get("prev_id", [])
        if (
            not isinstance(prev_ids, list)
            or len(prev_ids) > MAX_PREV_IDS
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in prev_ids)
        ):
            raise BadEdu("prev_id is not a list of integers")
        deleted = content.get("deleted", False)
        if not isinstance(deleted, bool):
            raise BadEdu("deleted is not a boolean")
        keys = content.get("keys")
        if keys is not None:
            keys = check_device_keys(keys, user_id, device_id)
        name = _str(content, "device_display_name", optional=True)
        if name is not None and len(name.encode()) > MAX_DISPLAY_NAME_BYTES:
            raise BadEdu("device_display_name is too long")
        if not await self._tracked(user_id):
            logger.debug("device list update of an untracked user", extra={"user_id": user_id})
            return
        async with self._locks.setdefault(user_id, asyncio.Lock()):
            await self._update(user, stream_id, prev_ids, device_id, deleted, keys, name)

    async def _update(
        self,
        user: UserID,
        stream_id: int,
        prev_ids: list[int],
        device_id: str,
        deleted: bool,
        keys: JsonDict | None,
        name: str | None,
    ) -> None:
        tracked = await self._store.get_tracked(user)
        if tracked is not None and not tracked[1]:
            current = tracked[0]
            if stream_id == current or await self._store.known_update_ids(user, [stream_id]):
                return  # seen already
            wanted = {p for p in prev_ids if p != current}
            if wanted <= await self._store.known_update_ids(user, wanted):
                await self._store.apply_update(
                    user, stream_id, device_id, deleted, keys, name, self._clock.now_ms()
                )
                await self._changed.mark_changed(user)
                return
            logger.info("device list update after a gap: resync", extra={"user_id": user})
        await self.resync(user)

    async def resync(self, user: UserID) -> bool:
        """Fetch the user's whole list from their server; False (and the cache stale, to
        be fetched again later) when that fails."""
        path = f"/_matrix/federation/v1/user/devices/{quote(user, safe='')}"
        try:
            answer = await self._fetch.get_json(user.server_name, path)
            stream_id, devices, cross = self._parse_devices(user, answer)
        except BadEdu as e:
            logger.info("device list resync answered badly", extra={"user_id": user, "why": str(e)})
            await self._failed(user)
            return False
        except Exception as e:  # noqa: BLE001 - any failure of the remote leaves it stale
            logger.info("device list resync failed", extra={"user_id": user, "why": str(e)})
            await self._failed(user)
            return False
        await self._store.replace_all(user, stream_id, devices, cross, self._clock.now_ms())
        await self._changed.mark_changed(user)
        return True

    async def _failed(self, user: UserID) -> None:
        interval = resync_backoff_ms(await self._store.get_resync_interval(user))
        await self._store.mark_stale(user, self._clock.now_ms(), interval)

    async def _resync_if_stale(self, user_id: str) -> bool:
        """A resync of a stale list, unless an update or another resync made it current
        meanwhile; whether it is current now."""
        user = UserID(user_id)
        async with self._locks.setdefault(user_id, asyncio.Lock()):
            tracked = await self._store.get_tracked(user)
            if tracked is not None and not tracked[1]:
                return True
            return await self.resync(user)

    async def retry_stale_once(self) -> int:
        """Fetch again the stale lists whose time has come (of users still sharing a room
        with ours; the others are no longer retried); how many are current now."""
        due = await self._store.due_resyncs(self._clock.now_ms(), RESYNC_BATCH)
        at_once = asyncio.Semaphore(RESYNCS_AT_ONCE)

        async def one(user_id: str) -> bool:
            async with at_once:
                if not await self._tracked(user_id):
                    await self._store.stop_resyncs(user_id)
                    return False
                return await self._resync_if_stale(user_id)

        return sum(await asyncio.gather(*(one(u) for u in due)))

    async def run_resyncs(self) -> None:
        """The background job: stale lists fetched again as their back-off ends."""
        while True:
            try:
                await self.retry_stale_once()
            except Exception:
                logger.exception("device list resync round failed")
            await asyncio.sleep(RESYNC_POLL_S)

    @staticmethod
    def _parse_devices(
        user: UserID, answer: Any
    ) -> tuple[int, list[RemoteDevice], dict[str, JsonDict]]:
        if not isinstance(answer, dict) or answer.get("user_id") != user:
            raise BadEdu("the answer is about another user")
        stream_id = _int(answer, "stream_id")
        devices = answer.get("devices")
        if not isinstance(devices, list) or len(devices) > MAX_DEVICES:
            raise BadEdu("devices is not a list within bounds")
        parsed: dict[str, RemoteDevice] = {}
        for d in devices:
            if not isinstance(d, dict):
                raise BadEdu("a device is not an object")
            device_id = _str(d, "device_id")
            assert device_id is not None
            keys = d.get("keys")
            name = _str(d, "device_display_name", optional=True)
            parsed[device_id] = RemoteDevice(
                device_id,
                check_device_keys(keys, user, device_id) if keys is not None else None,
                name,
            )
        cross: dict[str, JsonDict] = {}
        for key_type in CROSS_SIGNING:
            key = answer.get(f"{key_type}_key")
            if key is not None:
                cross[key_type] = check_cross_signing_key(key, user, key_type)
        return stream_id, list(parsed.values()), cross

    async def on_signing_key_update(self, origin: str, content: JsonDict) -> None:
        """An ``m.signing_key_update`` EDU: the user's new master or self-signing key."""
        user_id = _str(content, "user_id")
        assert user_id is not None
        try:
            user = UserID.parse(user_id)
        except MatrixError as e:
            raise BadEdu("user_id is not a user ID") from e
        if user.server_name != origin:
            raise BadEdu("update about another server's user")
        keys: dict[str, JsonDict] = {}
        for key_type in CROSS_SIGNING:
            key = content.get(f"{key_type}_key")
            if key is not None:
                keys[key_type] = check_cross_signing_key(key, user, key_type)
        if not keys or not await self._tracked(user):
            return
        await self._store.put_cross_signing(user, keys)
        await self._changed.mark_changed(user)

    async def current(self, user_ids: Collection[str]) -> dict[str, RemoteDeviceList]:
        """The cached lists of these users that are current; the others must be asked. A
        list is current while its user shares a room with ours: past that, their server
        stops sending us updates. A stale list is fetched again first (within
        ``QUERY_RESYNC_S``), whatever its back-off: someone wants it now."""
        stale = [u for u in await self._store.get_stale(user_ids) if await self._tracked(u)]
        if stale:
            try:
                async with asyncio.timeout(QUERY_RESYNC_S):
                    await asyncio.gather(*(self._resync_if_stale(u) for u in stale))
            except TimeoutError:
                logger.info(
                    "device list resyncs for a query timed out", extra={"count": len(stale)}
                )
        found = await self._store.get_lists(user_ids)
        return {u: found[u] for u in found if await self._tracked(u)}
