"""X-Matrix Authorization headers (spec, "Request Authentication") and our own keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from signedjson.key import decode_verify_key_base64, generate_signing_key
from signedjson.sign import verify_signed_json

from homeserver.core.clock import FakeClock
from homeserver.crypto.signing import load_or_create_signing_key
from homeserver.federation.auth import parse_auth_params, parse_x_matrix
from homeserver.federation.client import x_matrix_header
from homeserver.federation.local_keys import (
    LocalKeys,
    OldVerifyKey,
    load_old_verify_keys,
    old_keys_path,
    rotate_signing_key,
)


def test_header_we_send_parses_back() -> None:
    header = x_matrix_header("a.org", "b.org:8448", "ed25519:k1", "c2lnbmF0dXJl")
    assert header.startswith('X-Matrix origin="a.org",destination="b.org:8448",')
    parsed = parse_x_matrix(header)
    assert (parsed.origin, parsed.destination, parsed.key, parsed.sig) == (
        "a.org",
        "b.org:8448",
        "ed25519:k1",
        "c2lnbmF0dXJl",
    )


def test_rfc9110_forms() -> None:
    # Case-insensitive scheme and names, spaces and tabs around commas, bare values with
    # colons (older servers), escapes inside quotes, unknown parameters ignored.
    parsed = parse_x_matrix(
        'x-matrix  ORIGIN=a.org ,\tKey="ed25519:k\\"1" , sig=abc/+def, destination=b.org:8448,'
        ' future="x,y"'
    )
    assert parsed.origin == "a.org"
    assert parsed.key == 'ed25519:k"1'
    assert parsed.sig == "abc/+def"
    assert parsed.destination == "b.org:8448"
    assert parse_x_matrix("X-Matrix origin=a.org,key=ed25519:k1,sig=s").destination is None
    assert parse_auth_params('a="x\\\\y"') == {"a": "x\\y"}


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer abc",
        "X-Matrix",
        "X-Matrixorigin=a.org,key=k,sig=s",
        'X-Matrix origin="a.org",key="ed25519:k1"',  # no sig
        'X-Matrix origin="a.org,key="ed25519:k1",sig="s',  # unterminated quote
        'X-Matrix origin="a.org"x,key=k,sig=s',
        "X-Matrix origin=a.org,key=k,sig=s,origin=b.org",  # duplicated
        "X-Matrix origin,key=k,sig=s",
        "X-Matrix origin=a b,key=k,sig=s",
        'X-Matrix origin="a.org",key="k",sig="s\\',
        "X-Matrix =a.org,key=k,sig=s",
    ],
)
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(ValueError):
        parse_x_matrix(header)


def test_key_response_is_signed_and_lists_old_keys() -> None:
    clock = FakeClock()
    key = generate_signing_key("a_1")
    keys = LocalKeys("a.org", key, {"ed25519:old": OldVerifyKey("b2xk", 5)}, clock, 3_600_000)
    response = keys.key_response()
    assert response["server_name"] == "a.org"
    assert response["valid_until_ts"] == clock.now_ms() + 3_600_000
    assert response["old_verify_keys"] == {"ed25519:old": {"key": "b2xk", "expired_ts": 5}}
    b64 = response["verify_keys"]["ed25519:a_1"]["key"]
    verify_signed_json(response, "a.org", decode_verify_key_base64("ed25519", "a_1", b64))


def test_rotation_keeps_the_old_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    first = load_or_create_signing_key(path)
    old_id, new_id = rotate_signing_key(path, now_ms=1234)
    assert old_id == f"ed25519:{first.version}" and new_id != old_id
    second = load_or_create_signing_key(path)
    assert f"ed25519:{second.version}" == new_id
    old = load_old_verify_keys(old_keys_path(path))
    assert old[old_id].expired_ts == 1234
    keys = LocalKeys("a.org", second, old, FakeClock(), 60_000)
    response = keys.key_response()
    assert list(response["verify_keys"]) == [new_id]
    assert response["old_verify_keys"][old_id]["expired_ts"] == 1234
    rotate_signing_key(path, now_ms=5678)  # a second rotation keeps both old keys
    assert len(load_old_verify_keys(old_keys_path(path))) == 2


def test_malformed_old_keys_file_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "old_verify_keys.json"
    path.write_text(json.dumps({"ed25519:x": {"key": "abc"}}))
    with pytest.raises(ValueError, match="expired_ts"):
        load_old_verify_keys(path)
    assert load_old_verify_keys(tmp_path / "absent.json") == {}


def test_rotate_signing_key_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from homeserver.cli import main

    config = tmp_path / "homeserver.yaml"
    config.write_text(f"server_name: a.test\ndata_dir: {tmp_path / 'data'}\n")
    first = load_or_create_signing_key(tmp_path / "data" / "signing.key")
    assert main(["-c", str(config), "rotate-signing-key"]) == 0
    assert f"ed25519:{first.version} replaced by" in capsys.readouterr().out
    old = load_old_verify_keys(tmp_path / "data" / "old_verify_keys.json")
    assert list(old) == [f"ed25519:{first.version}"]
