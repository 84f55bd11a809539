"""Our server's keys as other servers see them: the current signing key, the old verify
keys that still check events signed before they expired, and the signed key response of
``GET /_matrix/key/v2/server``.

Rotation (``homeserver rotate-signing-key``) writes a new signing key and keeps the old
public key in ``old_verify_keys.json`` beside it, with its ``expired_ts``: events we signed
with it stay verifiable by every server.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signedjson.key import generate_signing_key, read_signing_keys, write_signing_keys
from signedjson.sign import sign_json

from homeserver.core.clock import Clock
from homeserver.core.types import JsonDict
from homeserver.crypto.signing import SigningKey, key_id, verify_key_base64

OLD_KEYS_FILE = "old_verify_keys.json"


@dataclass(frozen=True, slots=True)
class OldVerifyKey:
    key: str  # unpadded base64
    expired_ts: int


def old_keys_path(signing_key_file: Path) -> Path:
    return signing_key_file.parent / OLD_KEYS_FILE


def load_old_verify_keys(path: Path) -> dict[str, OldVerifyKey]:
    """``{key_id: {"key": ..., "expired_ts": ...}}``; none when the file does not exist."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of key IDs")
    out = {}
    for kid, entry in data.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("key"), str)
            or not isinstance(entry.get("expired_ts"), int)
        ):
            raise ValueError(f"{path}: {kid} needs a key and an integer expired_ts")
        out[kid] = OldVerifyKey(entry["key"], entry["expired_ts"])
    return out


def rotate_signing_key(signing_key_file: Path, now_ms: int) -> tuple[str, str]:
    """Replace the signing key with a new one, keeping the old public key with
    ``expired_ts`` = now. Returns the old and the new key ID."""
    with open(signing_key_file) as f:
        keys = read_signing_keys(f)
    if not keys:
        raise ValueError(f"no signing key in {signing_key_file}")
    old = keys[0]
    new = generate_signing_key("a_" + secrets.token_hex(2))
    while key_id(new) == key_id(old):
        new = generate_signing_key("a_" + secrets.token_hex(2))
    path = old_keys_path(signing_key_file)
    old_keys = {
        k: {"key": v.key, "expired_ts": v.expired_ts} for k, v in load_old_verify_keys(path).items()
    }
    old_keys[key_id(old)] = {"key": verify_key_base64(old), "expired_ts": now_ms}
    # The old key is kept before the new one replaces it: a crash in between leaves the
    # old key in use and already listed, never a key that nobody can verify.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(old_keys, indent=2, sort_keys=True))
    tmp.replace(path)
    tmp_key = signing_key_file.with_suffix(".tmp")
    with open(tmp_key, "w", opener=lambda p, fl: os.open(p, fl, 0o600)) as f:
        write_signing_keys(f, [new])
    tmp_key.replace(signing_key_file)
    return key_id(old), key_id(new)


class LocalKeys:
    """The keys this server signs with and publishes."""

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        old_verify_keys: dict[str, OldVerifyKey],
        clock: Clock,
        validity_ms: int,
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.key_id = key_id(signing_key)
        self.verify_key = verify_key_base64(signing_key)
        # A key that is current is not also old (a rotation back to a key kept as old).
        self.old_verify_keys = {k: v for k, v in old_verify_keys.items() if k != self.key_id}
        self._clock = clock
        self._validity_ms = validity_ms

    def sign(self, obj: JsonDict) -> JsonDict:
        """Add our signature to ``obj`` (in place, and returned)."""
        signed: JsonDict = sign_json(obj, self.server_name, self.signing_key)
        return signed

    def valid_until_ts(self) -> int:
        return self._clock.now_ms() + self._validity_ms

    def key_response(self) -> JsonDict:
        """spec: GET /_matrix/key/v2/server, signed with the current key."""
        response: dict[str, Any] = {
            "server_name": self.server_name,
            "valid_until_ts": self.valid_until_ts(),
            "verify_keys": {self.key_id: {"key": self.verify_key}},
            "old_verify_keys": {
                k: {"key": v.key, "expired_ts": v.expired_ts}
                for k, v in sorted(self.old_verify_keys.items())
            },
        }
        return self.sign(response)
