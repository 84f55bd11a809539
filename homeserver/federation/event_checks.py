"""Checking a PDU another server sent us, with the keys of the servers that must have signed
it fetched through the keyring first (the checks themselves are ``events/validation.py``'s,
which look keys up synchronously)."""

from __future__ import annotations

from signedjson.key import decode_verify_key_bytes
from unpaddedbase64 import decode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict
from homeserver.events.format import verify_event_signature
from homeserver.events.room_versions import RoomVersion
from homeserver.events.validation import (
    ServerKey,
    check_pdu_format,
    check_signatures,
    content_hash_matches,
    required_signers,
)
from homeserver.federation.keyring import Keyring


async def fetch_signing_keys(
    keyring: Keyring, pdu: JsonDict, version: RoomVersion
) -> dict[tuple[str, str], ServerKey]:
    """The keys of every server whose signature the PDU needs, for the key IDs it cites."""
    found: dict[tuple[str, str], ServerKey] = {}
    signatures = pdu.get("signatures")
    if not isinstance(signatures, dict):
        return found
    for server in sorted(required_signers(pdu, version)):
        cited = signatures.get(server)
        if not isinstance(cited, dict):
            continue
        key_ids = [k for k in cited if isinstance(k, str) and k.startswith("ed25519:")]
        if not key_ids:
            continue
        try:
            keys = await keyring.get_verify_keys(server, key_ids, 0)
        except Exception:  # an unreachable server: its signature cannot be checked
            continue
        for key_id, key in keys.items():
            try:
                verify_key = decode_verify_key_bytes(key_id, decode_base64(key.key))
            except Exception:
                continue
            found[(server, key_id)] = ServerKey(verify_key, key.valid_until_ts)
    return found


async def signed_by(keyring: Keyring, pdu: JsonDict, server: str, version: RoomVersion) -> bool:
    """Whether ``server`` signed the PDU with one of its keys (an invitee's server's
    signature on an invite, which no auth rule requires)."""
    signatures = pdu.get("signatures")
    cited = signatures.get(server) if isinstance(signatures, dict) else None
    if not isinstance(cited, dict):
        return False
    key_ids = [k for k in cited if isinstance(k, str) and k.startswith("ed25519:")]
    try:
        keys = await keyring.get_verify_keys(server, key_ids, 0) if key_ids else {}
    except Exception:  # an unreachable server: its signature cannot be checked
        return False
    for key_id, key in keys.items():
        try:
            verify_key = decode_verify_key_bytes(key_id, decode_base64(key.key))
        except Exception:
            continue
        if verify_event_signature(pdu, server, verify_key, version):
            return True
    return False


async def check_pdu_signatures(keyring: Keyring, pdu: JsonDict, version: RoomVersion) -> None:
    """Step 2 alone: 403 M_FORBIDDEN unless every server that must sign the PDU did."""
    keys = await fetch_signing_keys(keyring, pdu, version)
    check_signatures(pdu, version, lambda server, key_id: keys.get((server, key_id)))


async def check_received_pdu(keyring: Keyring, pdu: JsonDict, version: RoomVersion) -> None:
    """Format, signatures and content hash of a PDU (spec, "Checks performed on receipt of a
    PDU", steps 1 to 3): 400 M_BAD_JSON for a malformed PDU or a content hash that does not
    match (a membership we are asked to sign must be the one it claims), 403 M_FORBIDDEN for
    a missing or bad signature."""
    check_pdu_format(pdu, version)
    await check_pdu_signatures(keyring, pdu, version)
    if not content_hash_matches(pdu):
        raise MatrixError(Codes.BAD_JSON, "The PDU's content hash does not match")
