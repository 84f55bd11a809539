"""The server's ed25519 signing key: generated on first run, read at start-up."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    read_signing_keys,
    write_signing_keys,
)

SigningKey = Any  # nacl.signing.SigningKey with signedjson's ``alg`` and ``version``


def load_or_create_signing_key(path: Path) -> SigningKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = generate_signing_key("a_" + secrets.token_hex(2))
        with open(path, "w", opener=lambda p, f: os.open(p, f, 0o600)) as f:
            write_signing_keys(f, [key])
        return key
    with open(path) as f:
        keys = read_signing_keys(f)
    if not keys:
        raise ValueError(f"no signing key in {path}")
    return keys[0]


def key_id(key: SigningKey) -> str:
    return f"{key.alg}:{key.version}"


def verify_key_base64(key: SigningKey) -> str:
    return str(encode_verify_key_base64(get_verify_key(key)))
