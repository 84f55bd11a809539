"""Link secrets derived from the server's own secret (homeserver/crypto/derived_keys.py), and the
unsubscribe links signed with them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from homeserver.core.clock import FakeClock
from homeserver.crypto.derived_keys import hkdf_sha256, load_or_create_server_secret
from homeserver.crypto.signing import load_or_create_signing_key
from homeserver.push.pushers import (
    LEGACY_UNSUBSCRIBE_GRACE_MS,
    UNSUBSCRIBE_LINK_LIFETIME_MS,
    Unsubscriber,
)


def test_hkdf_matches_rfc_5869_and_cryptography() -> None:
    # RFC 5869, test case 1.
    okm = hkdf_sha256(
        bytes([0x0B] * 22), salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    for length in (16, 32, 64, 100):
        expected = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=b"x").derive(
            b"secret"
        )
        assert hkdf_sha256(b"secret", info=b"x", length=length) == expected


def test_secret_file_created_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "server_secret.json"
    first = load_or_create_server_secret(path, 1000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_server_secret(path, 5000)
    assert again == first and again.created_ms == 1000
    assert first.derive("push-unsubscribe") != first.derive("other")
    assert len(first.derive("push-unsubscribe")) == 32
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def _legacy_token(signing_secret: bytes, user: str, app_id: str, pushkey: str) -> str:
    """A link as the server signed it before: HMAC keyed by the signing key."""
    key = hmac.new(signing_secret, b"push-unsubscribe", hashlib.sha256).digest()
    payload = base64.urlsafe_b64encode(orjson.dumps([user, app_id, pushkey])).decode()
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


def test_unsubscribe_links(tmp_path: Path) -> None:
    clock = FakeClock()
    signing = bytes(load_or_create_signing_key(tmp_path / "signing.key").encode())
    secret = load_or_create_server_secret(tmp_path / "server_secret.json", clock.now_ms())
    unsubscriber = Unsubscriber(
        secret.derive("push-unsubscribe"),
        clock,
        legacy_secret=signing,
        legacy_until_ms=secret.created_ms + LEGACY_UNSUBSCRIBE_GRACE_MS,
    )
    token = unsubscriber.token("@a:test", "m.email", "a@example.org")
    assert unsubscriber.parse(token) == ("@a:test", "m.email", "a@example.org")
    # The link key is not the signing key: a token signed with it is no v2 token.
    version, payload, _ = token.split(".")
    forged = f"{version}.{payload}.{_legacy_token(signing, 'x', 'y', 'z').split('.')[1]}"
    assert unsubscriber.parse(forged) is None
    assert unsubscriber.parse(token[:-2] + "AA") is None
    assert unsubscriber.parse("v2.e30.x") is None and unsubscriber.parse("") is None

    legacy = _legacy_token(signing, "@a:test", "m.email", "a@example.org")
    assert unsubscriber.parse(legacy) == ("@a:test", "m.email", "a@example.org")
    clock.advance(LEGACY_UNSUBSCRIBE_GRACE_MS + 1)
    assert unsubscriber.parse(legacy) is None  # the grace period is over
    assert unsubscriber.parse(token) == ("@a:test", "m.email", "a@example.org")
    clock.advance(UNSUBSCRIBE_LINK_LIFETIME_MS)
    assert unsubscriber.parse(token) is None  # expired
