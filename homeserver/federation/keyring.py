"""Other servers' signing keys: fetched from the server itself, or through the trusted
notaries, cached in the database, refused once expired or when known to be compromised,
and used to verify signed JSON (requests, events, key responses)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cachetools
from canonicaljson import encode_canonical_json
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64

from homeserver.core.clock import Clock
from homeserver.core.config import TrustedKeyServer
from homeserver.core.jsonutil import MAX_SAFE_INT, loads
from homeserver.core.types import JsonDict
from homeserver.federation.client import FederationClient, FederationError
from homeserver.federation.local_keys import LocalKeys
from homeserver.federation.policy import ServerPolicy
from homeserver.storage.server_keys import ServerKeyStore, StoredServerKey

logger = logging.getLogger(__name__)

# spec, keys "valid_until_ts": a key is valid until the lesser of that and 7 days after it
# was fetched, so that a stolen key published with a far-off date does not live forever.
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
MAX_KEY_RESPONSE_BYTES = 64 * 1024
MAX_NOTARY_RESPONSE_BYTES = 1024 * 1024
# A server that did not give us the key we asked for is not asked again this soon: a flood
# of requests naming unknown key IDs does not become a flood of fetches.
REFETCH_AFTER_MS = 30 * 1000
# Servers whose keys are kept in memory (every inbound request is verified with them).
KEY_CACHE_SIZE = 10_000
SIGNING_ALGORITHM = "ed25519"
MAX_KEY_ID_CHARS = 255  # spec: identifiers are at most 255 bytes
MAX_KEY_CHARS = 256  # an ed25519 public key is 43 characters of unpadded base64


class SignatureError(Exception):
    """Signed JSON could not be verified (no usable key, a bad signature, a bad key
    response). The message says why, for logs and error responses."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    key_id: str
    key: str  # unpadded base64
    valid_until_ts: int  # already capped (MAX_KEY_VALIDITY_MS); expired_ts for old keys
    expired_ts: int | None


def _effective(key: StoredServerKey) -> VerifyKey:
    valid_until = key.valid_until_ts
    if key.expired_ts is None:
        valid_until = min(valid_until, key.fetched_ts + MAX_KEY_VALIDITY_MS)
    return VerifyKey(key.key_id, key.verify_key, valid_until, key.expired_ts)


def _is_timestamp(value: Any) -> bool:
    # Within canonical JSON's integer range: a stored timestamp fits every database.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SAFE_INT


def _is_key_entry(kid: Any, entry: Any) -> bool:
    return (
        isinstance(kid, str)
        and len(kid) <= MAX_KEY_ID_CHARS
        and isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and len(entry["key"]) <= MAX_KEY_CHARS
    )


def verify_signature(obj: JsonDict, server_name: str, key: VerifyKey) -> None:
    """SignatureError unless ``obj`` carries a valid signature of ``key`` by ``server_name``."""
    try:
        verify_key = decode_verify_key_bytes(key.key_id, decode_base64(key.key))
        verify_signed_json(obj, server_name, verify_key)
    except SignatureVerifyException as e:
        raise SignatureError(f"bad signature by {server_name} with {key.key_id}") from e
    except Exception as e:  # undecodable key or JSON that cannot be made canonical
        raise SignatureError(f"cannot check {key.key_id} of {server_name}: {e}") from e


def parse_key_response(
    data: Any, server_name: str, from_server: str, fetched_ts: int
) -> list[StoredServerKey]:
    """The keys of a ``/_matrix/key/v2/server`` response for ``server_name``, after checking
    its shape and that ``server_name`` signed it with one of the keys it lists."""
    if not isinstance(data, dict) or data.get("server_name") != server_name:
        raise SignatureError(f"key response is not about {server_name}")
    valid_until_ts = data.get("valid_until_ts")
    verify_keys = data.get("verify_keys")
    old_verify_keys = data.get("old_verify_keys", {})
    signatures = data.get("signatures")
    if (
        not _is_timestamp(valid_until_ts)
        or not isinstance(verify_keys, dict)
        or not isinstance(old_verify_keys, dict)
        or not isinstance(signatures, dict)
        or not isinstance(signatures.get(server_name), dict)
    ):
        raise SignatureError(f"malformed key response for {server_name}")
    assert isinstance(valid_until_ts, int)
    own_signatures = signatures[server_name]
    # Stored for serving again as a notary: the origin's signatures only.
    origin_signed = {**data, "signatures": {server_name: own_signatures}}
    key_json = encode_canonical_json(origin_signed).decode()
    current: list[StoredServerKey] = []
    for kid, entry in verify_keys.items():
        if not kid.startswith(SIGNING_ALGORITHM + ":"):
            continue  # an algorithm we do not know is not a key we can use
        if not _is_key_entry(kid, entry):
            raise SignatureError(f"malformed key of {server_name}")
        current.append(
            StoredServerKey(
                server_name,
                kid,
                entry["key"],
                valid_until_ts,
                None,
                fetched_ts,
                from_server,
                key_json,
            )
        )
    verified = False
    for key in current:
        if key.key_id in own_signatures:
            verify_signature(data, server_name, _effective(key))
            verified = True
    if not verified:
        raise SignatureError(f"key response of {server_name} is not signed by its own keys")
    old: list[StoredServerKey] = []
    for kid, entry in old_verify_keys.items():
        if not kid.startswith(SIGNING_ALGORITHM + ":"):
            continue
        if not _is_key_entry(kid, entry) or not _is_timestamp(entry.get("expired_ts")):
            raise SignatureError(f"malformed old key of {server_name}")
        if kid in verify_keys:
            continue
        expired_ts = entry["expired_ts"]
        old.append(
            StoredServerKey(
                server_name,
                kid,
                entry["key"],
                expired_ts,
                expired_ts,
                fetched_ts,
                from_server,
                key_json,
            )
        )
    return current + old


class Keyring:
    def __init__(
        self,
        local: LocalKeys,
        store: ServerKeyStore,
        client: FederationClient,
        policy: ServerPolicy,
        clock: Clock,
        *,
        trusted_key_servers: Sequence[TrustedKeyServer] = (),
        denied_verify_keys: Iterable[str] = (),
    ) -> None:
        self._local = local
        self._store = store
        self._client = client
        self._policy = policy
        self._clock = clock
        self._notaries = tuple(trusted_key_servers)
        self._denied = frozenset(k.rstrip("=") for k in denied_verify_keys)
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._last_fetch: cachetools.LRUCache[str, int] = cachetools.LRUCache(KEY_CACHE_SIZE)
        # The database's keys of a server, kept after a read: a key is refused here once it
        # expires like in the database, and a missing or expired one reads the database
        # again (another worker may have fetched it) before fetching.
        self._cache: cachetools.LRUCache[str, list[VerifyKey]] = cachetools.LRUCache(KEY_CACHE_SIZE)

    def is_denied(self, key: str) -> bool:
        return key.rstrip("=") in self._denied

    async def verify_json_for_server(
        self, server_name: str, obj: JsonDict, min_valid_until_ts: int
    ) -> None:
        """SignatureError unless ``obj`` is signed by ``server_name`` with a key valid at
        ``min_valid_until_ts`` (and every signature of it that we can check is valid)."""
        signatures = obj.get("signatures")
        mine = signatures.get(server_name) if isinstance(signatures, dict) else None
        if not isinstance(mine, dict):
            raise SignatureError(f"not signed by {server_name}")
        key_ids = [k for k in mine if k.startswith(SIGNING_ALGORITHM + ":")]
        if not key_ids:
            raise SignatureError(f"no {SIGNING_ALGORITHM} signature by {server_name}")
        keys = await self.get_verify_keys(server_name, key_ids, min_valid_until_ts)
        if not keys:
            raise SignatureError(
                f"no key of {server_name} valid until {min_valid_until_ts} among {key_ids}"
            )
        for key in keys.values():
            verify_signature(obj, server_name, key)

    async def get_verify_keys(
        self, server_name: str, key_ids: Collection[str], min_valid_until_ts: int
    ) -> dict[str, VerifyKey]:
        """Those of ``key_ids`` that are known (fetched if need be), valid until
        ``min_valid_until_ts`` and not denied."""
        if server_name == self._local.server_name:
            return self._usable(self._own_keys(), key_ids, min_valid_until_ts)
        cached = self._cache.get(server_name)
        if cached is not None:
            found = self._usable(cached, key_ids, min_valid_until_ts)
            if found:
                return found
        found = self._usable(await self._read(server_name), key_ids, min_valid_until_ts)
        if found:
            return found
        await self._fetch(server_name, key_ids, min_valid_until_ts)
        return self._usable(await self._read(server_name), key_ids, min_valid_until_ts)

    async def _read(self, server_name: str) -> list[VerifyKey]:
        keys = [_effective(k) for k in await self._store.get_keys(server_name)]
        self._cache[server_name] = keys
        return keys

    def _own_keys(self) -> list[VerifyKey]:
        local = self._local
        own = [VerifyKey(local.key_id, local.verify_key, local.valid_until_ts(), None)]
        for kid, old in local.old_verify_keys.items():
            own.append(VerifyKey(kid, old.key, old.expired_ts, old.expired_ts))
        return own

    def _usable(
        self, keys: Iterable[VerifyKey], key_ids: Collection[str], min_valid_until_ts: int
    ) -> dict[str, VerifyKey]:
        out = {}
        for key in keys:
            if key.key_id not in key_ids or key.valid_until_ts < min_valid_until_ts:
                continue
            if self.is_denied(key.key):
                logger.warning("denied key refused", extra={"key_id": key.key_id})
                continue
            out[key.key_id] = key
        return out

    async def _fetch(
        self,
        server_name: str,
        key_ids: Collection[str],
        min_valid_until_ts: int,
        *,
        notaries: bool = True,
    ) -> None:
        """Fetch ``server_name``'s keys, then ask the notaries (``notaries``) if that did not
        give a usable one; once at a time per server (concurrent callers share it)."""
        pending = self._inflight.get(server_name)
        if pending is not None:
            await asyncio.shield(pending)
            return
        last = self._last_fetch.get(server_name)
        now = self._clock.now_ms()
        if last is not None and now - last < REFETCH_AFTER_MS:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[server_name] = future
        try:
            self._last_fetch[server_name] = now
            await self._fetch_now(server_name, key_ids, min_valid_until_ts, notaries)
        finally:
            del self._inflight[server_name]
            future.set_result(None)

    async def _fetch_now(
        self,
        server_name: str,
        key_ids: Collection[str],
        min_valid_until_ts: int,
        notaries: bool,
    ) -> None:
        try:
            keys = await self.fetch_direct(server_name)
        except (FederationError, SignatureError) as e:
            logger.info("key fetch failed", extra={"server": server_name, "error": str(e)})
        else:
            await self._keep(keys)
            if self._usable([_effective(k) for k in keys], key_ids, min_valid_until_ts):
                return
        for notary in self._notaries if notaries else ():
            if notary.server_name == server_name:
                continue
            try:
                keys = await self.fetch_from_notary(
                    notary, server_name, key_ids, min_valid_until_ts
                )
            except (FederationError, SignatureError) as e:
                logger.info(
                    "notary key fetch failed",
                    extra={"server": server_name, "notary": notary.server_name, "error": str(e)},
                )
                continue
            await self._keep(keys)
            if self._usable([_effective(k) for k in keys], key_ids, min_valid_until_ts):
                return

    async def _keep(self, keys: Sequence[StoredServerKey]) -> None:
        """Store fetched keys, except where we already hold a later answer about a key."""
        if not keys:
            return
        stored = {k.key_id: k for k in await self._store.get_keys(keys[0].server_name)}
        newer = [
            k
            for k in keys
            if k.key_id not in stored or stored[k.key_id].valid_until_ts <= k.valid_until_ts
        ]
        await self._store.store_keys(newer)

    async def fetch_direct(self, server_name: str) -> list[StoredServerKey]:
        """GET /_matrix/key/v2/server of ``server_name`` itself."""
        data = await self._client.get_json(
            server_name, "/_matrix/key/v2/server", max_bytes=MAX_KEY_RESPONSE_BYTES
        )
        return parse_key_response(data, server_name, server_name, self._clock.now_ms())

    async def fetch_from_notary(
        self,
        notary: TrustedKeyServer,
        server_name: str,
        key_ids: Collection[str],
        min_valid_until_ts: int,
    ) -> list[StoredServerKey]:
        """POST /_matrix/key/v2/query to a trusted notary; each answer must be signed by
        the server it is about and by the notary."""
        criteria = {kid: {"minimum_valid_until_ts": min_valid_until_ts} for kid in key_ids}
        data = await self._client.request(
            notary.server_name,
            "POST",
            "/_matrix/key/v2/query",
            content={"server_keys": {server_name: criteria}},
            max_bytes=MAX_NOTARY_RESPONSE_BYTES,
        )
        answers = data.get("server_keys") if isinstance(data, dict) else None
        if not isinstance(answers, list):
            raise SignatureError(f"malformed notary response from {notary.server_name}")
        notary_keys = await self._notary_keys(notary)
        now = self._clock.now_ms()
        out: list[StoredServerKey] = []
        for answer in answers:
            if not isinstance(answer, dict) or answer.get("server_name") != server_name:
                continue
            signed_by = (answer.get("signatures") or {}).get(notary.server_name)
            usable = [
                k for k in notary_keys if isinstance(signed_by, dict) and k.key_id in signed_by
            ]
            if not usable:
                raise SignatureError(f"notary answer not signed by {notary.server_name}")
            for key in usable:
                verify_signature(answer, notary.server_name, key)
            out.extend(parse_key_response(answer, server_name, notary.server_name, now))
        return out

    async def _notary_keys(self, notary: TrustedKeyServer) -> list[VerifyKey]:
        if notary.verify_keys:
            return [
                VerifyKey(kid, key, 2**63 - 1, None)
                for kid, key in notary.verify_keys.items()
                if not self.is_denied(key)
            ]
        keys = await self._store.get_keys(notary.server_name)
        now = self._clock.now_ms()
        usable = [_effective(k) for k in keys if k.expired_ts is None]
        if not any(k.valid_until_ts >= now for k in usable):
            fetched = await self.fetch_direct(notary.server_name)
            await self._keep(fetched)
            usable = [_effective(k) for k in fetched if k.expired_ts is None]
        return [k for k in usable if k.valid_until_ts >= now and not self.is_denied(k.key)]

    async def key_responses(
        self, server_name: str, key_ids: Collection[str], min_valid_until_ts: int
    ) -> list[JsonDict]:
        """What a notary serves about ``server_name``: the key responses we hold (fetched
        again from the server when they do not satisfy the query), each signed by us too.
        No key IDs: every key."""
        if server_name == self._local.server_name:
            return [self._local.key_response()]
        stored = await self._store.get_keys(server_name, key_ids or None)
        if not self._satisfies(stored, key_ids, min_valid_until_ts) and self._policy.allows(
            server_name
        ):
            # From the server itself only: a notary vouches for what it saw, not for what
            # another notary told it.
            await self._fetch(server_name, key_ids, min_valid_until_ts, notaries=False)
            stored = await self._store.get_keys(server_name, key_ids or None)
        responses: list[JsonDict] = []
        for key_json in dict.fromkeys(
            k.key_json for k in stored if not self.is_denied(k.verify_key)
        ):
            response: JsonDict = loads(key_json)
            responses.append(self._local.sign(response))
        return responses

    @staticmethod
    def _satisfies(
        stored: Sequence[StoredServerKey], key_ids: Collection[str], min_valid_until_ts: int
    ) -> bool:
        valid = {k.key_id for k in stored if k.valid_until_ts >= min_valid_until_ts}
        if key_ids:
            return all(kid in valid for kid in key_ids)
        return bool(valid)
