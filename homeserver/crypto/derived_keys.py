"""Secrets for links and tokens, derived from the server's own random secret, never from the
federation signing key (one key, one purpose).

The secret is 32 random bytes in ``server_secret.json`` in the data directory, created on
first run (mode 0600). Each purpose derives its key with HKDF-SHA256 (RFC 5869) and its own
``info`` label, so that a key leaked or misused for one purpose says nothing about another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

SERVER_SECRET_FILE = "server_secret.json"
_SECRET_BYTES = 32


def hkdf_sha256(ikm: bytes, *, info: bytes, salt: bytes = b"", length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt``, expand with ``info``."""
    if length > 255 * hashlib.sha256().digest_size:
        raise ValueError("HKDF output too long")
    prk = hmac.new(salt or bytes(hashlib.sha256().digest_size), ikm, hashlib.sha256).digest()
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


@dataclass(frozen=True)
class ServerSecret:
    secret: bytes
    created_ms: int  # when the file was made: the start of legacy grace periods

    def derive(self, purpose: str) -> bytes:
        """The key for ``purpose`` (a fixed label such as ``"push-unsubscribe"``)."""
        return hkdf_sha256(self.secret, info=f"homeserver {purpose} v1".encode())


def load_or_create_server_secret(path: Path, now_ms: int) -> ServerSecret:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(_SECRET_BYTES)
        data = {"secret": base64.b64encode(secret).decode(), "created_ms": now_ms}
        # Written aside, then linked into place: two workers starting at once both end up
        # with the one secret linked first, and nobody reads a half-written file.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create_server_secret(path, now_ms)
        finally:
            tmp.unlink()
        return ServerSecret(secret, now_ms)
    data = orjson.loads(path.read_bytes())
    secret = base64.b64decode(data["secret"])
    if len(secret) < _SECRET_BYTES:
        raise ValueError(f"{path}: the secret is shorter than {_SECRET_BYTES} bytes")
    return ServerSecret(secret, int(data["created_ms"]))
