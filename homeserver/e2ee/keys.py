"""End-to-end encryption keys (spec: client-server API, "End-to-End Encryption").

Device keys, one-time and fallback keys (/keys/upload, /keys/query, /keys/claim), cross-signing
keys and signatures (/keys/device_signing/upload, /keys/signatures/upload), and the sync
extension that tells a device its key counts and whose device lists changed.

The server never holds a private key; it checks what it can: a device's keys are signed by
the device's own ed25519 key, cross-signing keys by the master key, uploaded signatures by
the key they name. Keys of users on other servers would come over federation, which this
server does not speak for keys yet: they are reported in ``failures``.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from cachetools import LRUCache
from canonicaljson import encode_canonical_json
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from unpaddedbase64 import decode_base64

from homeserver.accounts.service import PASSWORD_FLOWS
from homeserver.accounts.uia import AuthChallenge, UiaService
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.e2ee.device_lists import DeviceListService
from homeserver.e2ee.remote_keys import CachedDevices, RemoteKeys, claim_remote, query_remote
from homeserver.storage.e2e_keys import (
    ClaimRequest,
    CrossSigningKey,
    E2eKeyStore,
    NewKey,
    Signature,
)
from homeserver.wakeups.notifier import Notifier

ED25519 = "ed25519"
SIGNED_CURVE25519 = "signed_curve25519"
# Devices whose key counts syncs keep (E2eKeyService._key_counts).
KEY_COUNTS_KEPT = 20_000
MASTER = "master"
SELF_SIGNING = "self_signing"
USER_SIGNING = "user_signing"
CROSS_SIGNING_TYPES = (MASTER, SELF_SIGNING, USER_SIGNING)
# Ours: an algorithm or key ID is an identifier; clients use short ones.
MAX_KEY_NAME_BYTES = 255
ED25519_KEY_BYTES = 32
# What /keys/query reports for a server it does not ask (federation is off).
REMOTE_FAILURE: JsonDict = {"status": 503, "message": "Keys of remote users are not available"}


def _strip(obj: JsonDict) -> JsonDict:
    """The signed part of an object: everything but ``signatures`` and ``unsigned``."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def verify_ed25519(obj: JsonDict, user_id: str, key_name: str, public_key: str) -> bool:
    """Whether ``obj`` carries a valid signature ``signatures[user_id][key_name]`` by the
    unpadded-base64 ed25519 ``public_key`` (spec, appendices "Signing JSON")."""
    signatures = obj.get("signatures")
    by_user = signatures.get(user_id) if isinstance(signatures, dict) else None
    signature = by_user.get(key_name) if isinstance(by_user, dict) else None
    if not isinstance(signature, str):
        return False
    try:
        VerifyKey(decode_base64(public_key)).verify(
            encode_canonical_json(_strip(obj)), decode_base64(signature)
        )
    except (ValueError, TypeError, binascii.Error, CryptoError):
        return False
    return True


def _is_ed25519_key(public_key: str) -> bool:
    try:
        return len(decode_base64(public_key)) == ED25519_KEY_BYTES
    except (ValueError, binascii.Error):
        return False


def check_name(name: str, what: str) -> str:
    """An algorithm, key ID or device ID: 1 to 255 bytes, no control characters (which the
    databases would not all store)."""
    if (
        not name
        or len(name.encode()) > MAX_KEY_NAME_BYTES
        or any(ord(c) < 0x20 or c == "\x7f" for c in name)
    ):
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid {what}: {name!r}")
    return name


def _split_key_name(name: str, what: str) -> tuple[str, str]:
    """``<algorithm>:<key_id>``, both non-empty."""
    algorithm, sep, key_id = check_name(name, what).partition(":")
    if not sep or not algorithm or not key_id:
        raise MatrixError(Codes.INVALID_PARAM, f"{what} {name!r} is not <algorithm>:<key_id>")
    return algorithm, key_id


class E2eKeyService:
    """Also the sync extension (``TopLevelSource``) for device lists and key counts."""

    def __init__(
        self,
        store: E2eKeyStore,
        device_lists: DeviceListService,
        uia: UiaService,
        server_name: str,
        notifier: Notifier,
        *,
        remote: RemoteKeys | None = None,
        remote_cache: CachedDevices | None = None,
    ) -> None:
        self._store = store
        # Remote users' device lists kept by their servers' updates: asked first.
        self._remote_cache = remote_cache
        # None (federation off): remote users' keys are reported in ``failures``.
        self._remote = remote
        self._device_lists = device_lists
        self._uia = uia
        self._server_name = server_name
        self._notifier = notifier
        # (user, device) -> (one-time-keys position, counts, fallback types): what syncs
        # send, read again once the stream has moved (an upload or claim, by anyone).
        self._counts: LRUCache[tuple[str, str], tuple[int, dict[str, int], list[str]]] = LRUCache(
            maxsize=KEY_COUNTS_KEPT
        )

    # --- /keys/upload ----------------------------------------------------------------------

    async def upload_keys(
        self,
        requester: Requester,
        device_keys: JsonDict | None,
        one_time_keys: Mapping[str, Any],
        fallback_keys: Mapping[str, Any],
    ) -> dict[str, int]:
        """Store the device's keys; returns its one-time key counts by algorithm."""
        check_json_numbers(
            {
                "device_keys": device_keys,
                "one_time_keys": one_time_keys,
                "fallback_keys": fallback_keys,
            }
        )
        if device_keys is not None:
            device_keys = self._check_device_keys(requester, device_keys)
        otks = [
            NewKey(*_split_key_name(name, "One-time key"), key)
            for name, key in one_time_keys.items()
        ]
        fallbacks = [
            NewKey(*_split_key_name(name, "Fallback key"), key)
            for name, key in fallback_keys.items()
        ]
        if len({k.algorithm for k in fallbacks}) != len(fallbacks):
            raise MatrixError(Codes.INVALID_PARAM, "At most one fallback key per algorithm")
        result = await self._store.upload(
            requester.user_id, requester.device_id, device_keys, otks, fallbacks
        )
        if result.device_missing:
            raise MatrixError(Codes.NOT_FOUND, "The device was deleted")
        if result.conflict is not None:
            raise MatrixError(
                Codes.INVALID_PARAM,
                f"One-time key {result.conflict} already exists with different content",
            )
        if result.device_keys_changed:
            await self._device_lists.mark_changed(requester.user_id, (requester.device_id,))
        if result.keys_position is not None:
            await self._notifier.notify(
                Stream.ONE_TIME_KEYS, result.keys_position, user_ids=(requester.user_id,)
            )
        return {SIGNED_CURVE25519: 0, **result.counts}

    def _check_device_keys(self, requester: Requester, device_keys: JsonDict) -> JsonDict:
        if device_keys.get("user_id") != requester.user_id:
            raise MatrixError(
                Codes.INVALID_PARAM, "device_keys.user_id is not the user of the access token"
            )
        if device_keys.get("device_id") != requester.device_id:
            raise MatrixError(
                Codes.INVALID_PARAM, "device_keys.device_id is not the device of the access token"
            )
        key_name = f"{ED25519}:{requester.device_id}"
        public_key = device_keys["keys"].get(key_name)
        if public_key is None:
            raise MatrixError(Codes.INVALID_PARAM, f"device_keys.keys has no {key_name}")
        if not _is_ed25519_key(public_key):
            raise MatrixError(
                Codes.INVALID_PARAM, f"device_keys.keys.{key_name} is not an ed25519 public key"
            )
        if not verify_ed25519(device_keys, requester.user_id, key_name, public_key):
            raise MatrixError(
                Codes.INVALID_SIGNATURE, "device_keys is not signed by the device's ed25519 key"
            )
        # ``unsigned`` is for servers to fill in (the display name), not stored.
        return {k: v for k, v in device_keys.items() if k != "unsigned"}

    # --- /keys/query -----------------------------------------------------------------------

    async def query_keys(
        self,
        requester: Requester,
        wanted: Mapping[str, Sequence[str]],
        timeout_ms: int | None = None,
    ) -> JsonDict:
        local: dict[str, Sequence[str]] = {}
        remote: dict[str, Sequence[str]] = {}
        failures: JsonDict = {}
        for user_id, device_ids in wanted.items():
            server = UserID.parse(user_id).server_name
            if server == self._server_name:
                local[user_id] = [check_name(d, "device ID") for d in device_ids]
            elif self._remote is not None:
                remote[user_id] = [check_name(d, "device ID") for d in device_ids]
            else:
                failures[server] = REMOTE_FAILURE
        response = await self.local_keys(requester.user_id, local, display_names=True)
        if remote and self._remote is not None:
            found, remote_failures = await query_remote(
                self._remote, remote, timeout_ms, self._remote_cache
            )
            response["device_keys"].update(found.pop("device_keys"))
            for section, keys in found.items():
                response.setdefault(section, {}).update(keys)
            failures.update(remote_failures)
        response["failures"] = failures
        return response

    async def local_keys(
        self, viewer: UserID | None, local: Mapping[str, Sequence[str]], *, display_names: bool
    ) -> JsonDict:
        """Device and cross-signing keys of our users as ``viewer`` may see them (None for
        another server: only what every user may see)."""
        device_keys: JsonDict = {user_id: {} for user_id in local}
        signatures = _SignatureIndex(viewer, await self._store.get_signatures(local))
        for d in await self._store.get_device_keys(local):
            keys = signatures.merge(d.keys, d.user_id, d.device_id)
            if display_names and d.display_name is not None:
                keys["unsigned"] = {"device_display_name": d.display_name}
            device_keys[d.user_id][d.device_id] = keys
        response: JsonDict = {"device_keys": device_keys}
        cross_signing = await self._store.get_cross_signing_keys(local)
        for key_type in CROSS_SIGNING_TYPES:
            section: JsonDict = {}
            for user_id, keys in cross_signing.items():
                # spec: a user-signing key is only ever shown to its owner.
                if key_type in keys and (key_type != USER_SIGNING or user_id == viewer):
                    key = keys[key_type]
                    section[user_id] = signatures.merge(key.key, user_id, key.public_key)
            if section:
                response[f"{key_type}_keys"] = section
        return response

    # --- /keys/claim -----------------------------------------------------------------------

    async def claim_keys(
        self, wanted: Mapping[str, Mapping[str, str]], timeout_ms: int | None = None
    ) -> JsonDict:
        requests: list[ClaimRequest] = []
        remote: dict[str, Mapping[str, str]] = {}
        failures: JsonDict = {}
        for user_id, by_device in wanted.items():
            server = UserID.parse(user_id).server_name
            if server != self._server_name:
                if self._remote is None:
                    failures[server] = REMOTE_FAILURE
                else:
                    remote[user_id] = {
                        check_name(d, "device ID"): check_name(a, "algorithm")
                        for d, a in by_device.items()
                    }
                continue
            requests.extend(
                ClaimRequest(
                    user_id, check_name(device_id, "device ID"), check_name(algorithm, "algorithm")
                )
                for device_id, algorithm in by_device.items()
            )
        one_time_keys: JsonDict = {}
        taken, position = await self._store.claim(requests)
        for claimed in taken:
            one_time_keys.setdefault(claimed.user_id, {}).setdefault(claimed.device_id, {})[
                claimed.key_id
            ] = claimed.key
        if position is not None:
            # The owners' syncs learn their new counts (and every worker the new position).
            await self._notifier.notify(
                Stream.ONE_TIME_KEYS, position, user_ids=sorted(one_time_keys)
            )
        if remote and self._remote is not None:
            found, remote_failures = await claim_remote(self._remote, remote, timeout_ms)
            one_time_keys.update(found)
            failures.update(remote_failures)
        return {"one_time_keys": one_time_keys, "failures": failures}

    # --- /keys/changes and the sync extension ----------------------------------------------

    async def key_changes(
        self, requester: Requester, from_token: StreamToken, to_token: StreamToken
    ) -> JsonDict:
        changes = await self._device_lists.changes(requester.user_id, from_token, to_token)
        return {"changed": changes.changed, "left": changes.left}

    async def top_level(
        self, requester: Requester, since: StreamToken | None, now: StreamToken
    ) -> JsonDict:
        """``TopLevelSource``: device lists (incremental syncs only) and the key counts."""
        out: JsonDict = {}
        if since is not None:
            changes = await self._device_lists.changes(
                requester.user_id, since, now, committed=True
            )
            if changes.changed or changes.left:
                out["device_lists"] = {"changed": changes.changed, "left": changes.left}
        counts, fallback = await self._key_counts(requester, now.get(Stream.ONE_TIME_KEYS))
        # matrix-nio reads signed_curve25519 to decide on uploads: always there, 0 included.
        out["device_one_time_keys_count"] = {SIGNED_CURVE25519: 0, **counts}
        out["device_unused_fallback_key_types"] = fallback
        return out

    async def _key_counts(
        self, requester: Requester, upto: int
    ) -> tuple[dict[str, int], list[str]]:
        """The device's key counts at the committed one-time-keys position ``upto``: kept
        until the stream moves past the position they were read at (counts only change with
        an upload, a claim or the device's deletion, and each takes a position)."""
        key = (requester.user_id, requester.device_id)
        kept = self._counts.get(key)
        if kept is not None and kept[0] >= upto:
            return dict(kept[1]), list(kept[2])
        # Read after ``upto`` was committed: it holds every change up to there.
        counts, fallback = await self._store.key_counts(*key)
        self._counts[key] = (upto, dict(counts), list(fallback))
        return counts, fallback

    # --- deleted devices -------------------------------------------------------------------

    async def delete_for_devices(self, user_id: UserID, device_ids: Sequence[str]) -> None:
        """Deleted devices lose their keys; the user's contacts refetch the device list."""
        position = await self._store.delete_for_devices(user_id, device_ids)
        if position is not None:
            await self._notifier.notify(Stream.ONE_TIME_KEYS, position, user_ids=(user_id,))
        await self._device_lists.mark_changed(user_id, device_ids, deleted=True)

    # --- /keys/device_signing/upload -------------------------------------------------------

    async def upload_cross_signing_keys(
        self,
        requester: Requester,
        keys: Mapping[str, JsonDict],
        auth: JsonDict | None,
        fingerprint: str,
    ) -> AuthChallenge | None:
        """``keys``: ``{master|self_signing|user_signing: key}``, the ones given.

        spec (v1.11): user-interactive authentication unless the user has no master key yet,
        or the request holds nothing but the keys already stored (a retried upload).
        """
        if not keys:
            raise MatrixError(Codes.MISSING_PARAM, "No cross-signing key to upload")
        check_json_numbers(dict(keys))
        user_id = requester.user_id
        current = (await self._store.get_cross_signing_keys([user_id])).get(user_id, {})
        public_keys = {
            key_type: self._check_cross_signing_key(user_id, key_type, key)
            for key_type, key in keys.items()
        }
        master_key = public_keys.get(MASTER) or (
            current[MASTER].public_key if MASTER in current else None
        )
        for key_type in (SELF_SIGNING, USER_SIGNING):
            if key_type not in keys:
                continue
            if master_key is None:
                raise MatrixError(
                    Codes.MISSING_PARAM, f"No master key to sign the {key_type} key with"
                )
            if not verify_ed25519(keys[key_type], user_id, f"{ED25519}:{master_key}", master_key):
                raise MatrixError(
                    Codes.INVALID_SIGNATURE, f"The {key_type} key is not signed by the master key"
                )
        device_ids = await self._store.get_device_ids(user_id)
        if any(public_key in device_ids for public_key in public_keys.values()):
            # spec: device IDs and cross-signing public keys share one namespace.
            raise MatrixError(Codes.FORBIDDEN, "Key ID in use by a device")
        new = {
            key_type: key
            for key_type, key in keys.items()
            if key_type not in current
            or encode_canonical_json(current[key_type].key) != encode_canonical_json(key)
        }
        result = None
        if MASTER in current and new:
            uia = await self._uia.authenticate(auth, PASSWORD_FLOWS, fingerprint, requester=user_id)
            if isinstance(uia, AuthChallenge):
                return uia
            result = uia
        if new:
            stored = await self._store.set_cross_signing_keys(
                user_id,
                {key_type: (public_keys[key_type], key) for key_type, key in new.items()},
                expected_master=current[MASTER].public_key if MASTER in current else None,
            )
            if not stored:
                raise MatrixError(
                    Codes.FORBIDDEN, "The cross-signing keys changed meanwhile; try again"
                )
            await self._device_lists.mark_changed(user_id)
        if result is not None:
            await self._uia.finish(result)
        return None

    def _check_cross_signing_key(self, user_id: str, key_type: str, key: JsonDict) -> str:
        """The key's public key, once its shape is right (spec: CrossSigningKey)."""
        if key.get("user_id") != user_id:
            raise MatrixError(
                Codes.INVALID_PARAM, f"The {key_type} key's user_id is not the user's"
            )
        usage = key.get("usage")
        if not isinstance(usage, list) or key_type not in usage:
            raise MatrixError(
                Codes.INVALID_PARAM, f"The {key_type} key's usage must hold {key_type!r}"
            )
        public = key.get("keys")
        if not isinstance(public, dict) or len(public) != 1:
            raise MatrixError(
                Codes.INVALID_PARAM, f"The {key_type} key must hold exactly one public key"
            )
        ((name, public_key),) = public.items()
        if (
            name != f"{ED25519}:{public_key}"
            or not isinstance(public_key, str)
            or not _is_ed25519_key(public_key)
        ):
            raise MatrixError(
                Codes.INVALID_PARAM,
                f"The {key_type} key is not ed25519:<public key> mapped to an ed25519 public key",
            )
        return public_key

    # --- /keys/signatures/upload -----------------------------------------------------------

    async def upload_signatures(
        self, requester: Requester, signed: Mapping[str, Mapping[str, JsonDict]]
    ) -> JsonDict:
        """Verify and store the requester's signatures; returns ``failures`` by user and key.

        The requester may sign their own devices (self-signing key), their own master key
        (their devices) and other users' master keys (user-signing key).
        """
        check_json_numbers(dict(signed))
        user_id = requester.user_id
        local = [u for u in signed if self._is_local(u)]
        cross_signing = await self._store.get_cross_signing_keys({user_id, *local})
        mine = cross_signing.get(user_id, {})
        own_devices = {
            d.device_id: d.keys for d in await self._store.get_device_keys({user_id: []})
        }
        failures: JsonDict = {}
        accepted: list[Signature] = []
        for target_user, by_key in signed.items():
            for key_id, obj in by_key.items():
                try:
                    if target_user not in local:
                        UserID.parse(target_user)  # M_INVALID_PARAM if it is not one
                        raise MatrixError(Codes.NOT_FOUND, "Keys of remote users are not available")
                    theirs = cross_signing.get(target_user, {})
                    accepted.extend(
                        self._check_signed(
                            user_id, target_user, key_id, obj, mine, theirs, own_devices
                        )
                    )
                except MatrixError as e:
                    failures.setdefault(target_user, {})[key_id] = {
                        "errcode": str(e.code),
                        "error": e.message,
                    }
        await self._store.add_signatures(accepted)
        for target_user in sorted({s.target_user_id for s in accepted}):
            # Whoever sees the target's keys refetches them (the signer's other devices too).
            # The targets are devices or cross-signing keys: federation sends an update for
            # the devices among them, and the cross-signing keys.
            targets = sorted({s.target_key_id for s in accepted if s.target_user_id == target_user})
            await self._device_lists.mark_changed(UserID(target_user), targets)
            await self._device_lists.mark_changed(UserID(target_user))
        return failures

    def _check_signed(
        self,
        user_id: str,
        target_user: str,
        key_id: str,
        obj: JsonDict,
        mine: Mapping[str, CrossSigningKey],
        theirs: Mapping[str, CrossSigningKey],
        own_devices: Mapping[str, JsonDict],
    ) -> list[Signature]:
        """The verified signatures ``obj`` carries by the requester; MatrixError if none or
        any is bad."""
        if target_user == user_id and key_id in own_devices:
            stored, signers = own_devices[key_id], self._public_keys(mine, SELF_SIGNING)
        elif MASTER in theirs and key_id == theirs[MASTER].public_key:
            stored = theirs[MASTER].key
            signers = (
                {f"{ED25519}:{d}": k["keys"].get(f"{ED25519}:{d}") for d, k in own_devices.items()}
                if target_user == user_id
                else self._public_keys(mine, USER_SIGNING)
            )
        else:
            raise MatrixError(Codes.NOT_FOUND, "Unknown key")
        if _strip(obj) != _strip(stored):
            raise MatrixError(Codes.INVALID_PARAM, "The signed object is not the stored key")
        signatures = obj.get("signatures")
        given = signatures.get(user_id) if isinstance(signatures, dict) else None
        if not isinstance(given, dict):
            raise MatrixError(Codes.INVALID_SIGNATURE, "No signature by the user")
        names = [name for name in given if name in signers]
        if not names:
            raise MatrixError(Codes.INVALID_SIGNATURE, "No signature by a key that may sign it")
        out = []
        for name in names:
            public_key = signers[name]
            if public_key is None or not verify_ed25519(obj, user_id, name, public_key):
                raise MatrixError(Codes.INVALID_SIGNATURE, f"Invalid signature by {name}")
            out.append(Signature(target_user, key_id, user_id, name, given[name]))
        return out

    def _is_local(self, user_id: str) -> bool:
        try:
            return UserID.parse(user_id).server_name == self._server_name
        except MatrixError:
            return False

    @staticmethod
    def _public_keys(keys: Mapping[str, CrossSigningKey], key_type: str) -> dict[str, str]:
        if key_type not in keys:
            return {}
        return {f"{ED25519}:{keys[key_type].public_key}": keys[key_type].public_key}


class _SignatureIndex:
    """Uploaded signatures, by target key, filtered by what the requester may see.

    spec, cross-signing "Key and signature security": a user sees the signatures made by
    themselves and those users made of their own keys, never another user's user-signing
    key's signatures of a third user.
    """

    def __init__(self, requester: str | None, signatures: Sequence[Signature]) -> None:
        self._requester = requester
        self._by_target: dict[tuple[str, str], list[Signature]] = {}
        for s in signatures:
            self._by_target.setdefault((s.target_user_id, s.target_key_id), []).append(s)

    def _visible(self, signer: str, target_user: str) -> bool:
        return signer in (self._requester, target_user)

    def merge(self, key: JsonDict, target_user: str, target_key_id: str) -> JsonDict:
        """A copy of ``key`` with the visible uploaded signatures added to its own."""
        merged: dict[str, dict[str, str]] = {}
        own = key.get("signatures")
        if isinstance(own, dict):
            for signer, by_key in own.items():
                if self._visible(signer, target_user) and isinstance(by_key, dict):
                    merged[signer] = dict(by_key)
        for s in self._by_target.get((target_user, target_key_id), []):
            if self._visible(s.signer_user_id, target_user):
                merged.setdefault(s.signer_user_id, {})[s.signer_key_id] = s.signature
        out = dict(key)
        if merged or "signatures" in key:
            out["signatures"] = merged
        return out
