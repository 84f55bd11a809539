"""Keys of remote users for our clients' /keys/query and /keys/claim: asked of each user's
server (federation /user/keys/query and /user/keys/claim), all servers at once, within the
client's timeout. An answer is taken only for what was asked of that server, and only in
shapes our own keys have: a server cannot answer for another server's users."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from homeserver.core.errors import MatrixError
from homeserver.core.ids import UserID
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.types import JsonDict
from homeserver.federation.client import FederationError
from homeserver.storage.remote_devices import RemoteDeviceList

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 10_000  # spec, /keys/query and /keys/claim: "timeout" defaults to 10 s
MAX_TIMEOUT_MS = 60_000
# Remote cross-signing keys our clients may be shown (never another user's user-signing key).
REMOTE_CROSS_SIGNING = ("master", "self_signing")


class RemoteKeys(Protocol):
    """Asks another server about its users' keys (federation /user/keys/*)."""

    async def query_user_keys(self, server_name: str, wanted: Mapping[str, Sequence[str]]) -> Any:
        """The remote answer as it came; FederationError when there is none."""
        ...

    async def claim_user_keys(
        self, server_name: str, wanted: Mapping[str, Mapping[str, str]]
    ) -> Any: ...


class CachedDevices(Protocol):
    """Remote users' device lists kept current by their servers' updates (the remote
    device list cache, ``homeserver/federation/remote_devices.py``)."""

    async def current(self, user_ids: Collection[str]) -> Mapping[str, RemoteDeviceList]: ...


def by_server(user_ids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for user_id in user_ids:
        out.setdefault(UserID.parse(user_id).server_name, []).append(user_id)
    return out


def _failure(error: BaseException) -> JsonDict:
    if isinstance(error, FederationError) and error.status is not None:
        return {"status": error.status, "message": "The server refused the query"}
    if isinstance(error, TimeoutError):
        return {"status": 504, "message": "The server did not answer in time"}
    return {"status": 503, "message": "The server could not be reached"}


def _clean(value: Any) -> bool:
    """JSON we could have stored ourselves (integers in range, no floats)."""
    try:
        check_json_numbers(value)
    except MatrixError:
        return False
    return True


def _timeout_s(timeout_ms: int | None) -> float:
    ms = DEFAULT_TIMEOUT_MS if timeout_ms is None else max(0, min(timeout_ms, MAX_TIMEOUT_MS))
    return ms / 1000


async def _ask_all(calls: Mapping[str, Any], timeout_ms: int | None) -> dict[str, Any]:
    """Each server's answer or the exception it ended with, all within one deadline."""

    async def one(call: Any) -> Any:
        try:
            async with asyncio.timeout(_timeout_s(timeout_ms)):
                return await call
        except (FederationError, TimeoutError) as e:
            return e

    servers = list(calls)
    answers = await asyncio.gather(*(one(calls[s]) for s in servers))
    return dict(zip(servers, answers, strict=True))


def _from_cache(cached: RemoteDeviceList, asked: Sequence[str]) -> JsonDict:
    return {
        d.device_id: d.keys
        for d in cached.devices
        if d.keys is not None and (not asked or d.device_id in asked)
    }


async def query_remote(
    remote: RemoteKeys,
    wanted: Mapping[str, Sequence[str]],
    timeout_ms: int | None,
    cache: CachedDevices | None = None,
) -> tuple[JsonDict, JsonDict]:
    """(device_keys, master_keys and self_signing_keys sections, failures by server).

    Users whose device list the cache holds current are answered from it; the others are
    asked of their servers."""
    response: JsonDict = {"device_keys": {}}
    cached = await cache.current(list(wanted)) if cache is not None else {}
    for user_id, found in cached.items():
        response["device_keys"][user_id] = _from_cache(found, wanted[user_id])
        for key_type in REMOTE_CROSS_SIGNING:
            key = found.cross_signing.get(key_type)
            if key is not None:
                response.setdefault(f"{key_type}_keys", {})[user_id] = key
    servers = by_server([u for u in wanted if u not in cached])
    answers = await _ask_all(
        {
            server: remote.query_user_keys(server, {u: wanted[u] for u in users})
            for server, users in servers.items()
        },
        timeout_ms,
    )
    failures: JsonDict = {}
    for server, answer in answers.items():
        if isinstance(answer, BaseException):
            logger.info("remote key query failed", extra={"server": server})
            failures[server] = _failure(answer)
            continue
        if not isinstance(answer, dict):
            failures[server] = {"status": 502, "message": "The server's answer was malformed"}
            continue
        asked = set(servers[server])
        devices = answer.get("device_keys")
        for user_id in asked:
            by_device = devices.get(user_id) if isinstance(devices, dict) else None
            response["device_keys"][user_id] = _devices(user_id, by_device, wanted[user_id])
        for key_type in REMOTE_CROSS_SIGNING:
            section = answer.get(f"{key_type}_keys")
            if not isinstance(section, dict):
                continue
            for user_id, key in section.items():
                if user_id in asked and _is_user_key(user_id, key):
                    response.setdefault(f"{key_type}_keys", {})[user_id] = key
    return response, failures


def _devices(user_id: str, by_device: Any, asked: Sequence[str]) -> JsonDict:
    out: JsonDict = {}
    if not isinstance(by_device, dict):
        return out
    for device_id, keys in by_device.items():
        if asked and device_id not in asked:
            continue
        if (
            isinstance(keys, dict)
            and keys.get("user_id") == user_id
            and keys.get("device_id") == device_id
            and isinstance(keys.get("keys"), dict)
            and _clean(keys)
        ):
            out[device_id] = keys
    return out


def _is_user_key(user_id: str, key: Any) -> bool:
    return (
        isinstance(key, dict)
        and key.get("user_id") == user_id
        and isinstance(key.get("keys"), dict)
        and _clean(key)
    )


async def claim_remote(
    remote: RemoteKeys, wanted: Mapping[str, Mapping[str, str]], timeout_ms: int | None
) -> tuple[JsonDict, JsonDict]:
    """(one_time_keys, failures by server)."""
    servers = by_server(list(wanted))
    answers = await _ask_all(
        {
            server: remote.claim_user_keys(server, {u: wanted[u] for u in users})
            for server, users in servers.items()
        },
        timeout_ms,
    )
    one_time_keys: JsonDict = {}
    failures: JsonDict = {}
    for server, answer in answers.items():
        if isinstance(answer, BaseException):
            logger.info("remote key claim failed", extra={"server": server})
            failures[server] = _failure(answer)
            continue
        section = answer.get("one_time_keys") if isinstance(answer, dict) else None
        if not isinstance(section, dict):
            failures[server] = {"status": 502, "message": "The server's answer was malformed"}
            continue
        for user_id in servers[server]:
            by_device = section.get(user_id)
            if not isinstance(by_device, dict):
                continue
            for device_id, keys in by_device.items():
                if device_id in wanted[user_id] and isinstance(keys, dict) and _clean(keys):
                    one_time_keys.setdefault(user_id, {})[device_id] = keys
    return one_time_keys, failures
