"""The PDU format: canonical JSON, content and reference hashes, signing, IDs.

Events are plain JSON objects in PDU form (spec, server-server API "PDUs"). In room versions 1
and 2 the `event_id` is part of the event (`$opaque:domain`) and `prev_events`/`auth_events`
are `[event_id, hashes]` pairs. From room version 3 a PDU carries no `event_id`: the ID is
derived from the reference hash (standard base64 in v3, URL-safe from v4). Callers must not add
one before hashing, since the redaction rules up to v10 keep a top-level `event_id` and it
would then change the hash.
"""

from __future__ import annotations

import hashlib
from typing import Any

from canonicaljson import encode_canonical_json
from nacl.exceptions import CryptoError
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.types import JsonDict
from homeserver.events.redaction import redact as redact
from homeserver.events.redaction import redact_with
from homeserver.events.room_versions import EventFormat, RoomVersion

# spec, client-server API "Size limits": the whole PDU, signatures included, in canonical JSON.
MAX_PDU_BYTES = 65536
# spec, "Size limits": `type` and `state_key` at most 255 bytes; `sender`, `room_id` and
# `event_id` at most the identifier limit of the appendices, also 255 bytes.
MAX_KEY_BYTES = 255


def canonical_json(obj: Any) -> bytes:
    """Encode as canonical JSON (spec, appendices "Canonical JSON")."""
    return encode_canonical_json(obj)


def compute_content_hash(event: JsonDict) -> str:
    """The unpadded base64 SHA-256 content hash (spec, "Calculating the content hash")."""
    stripped = {k: v for k, v in event.items() if k not in ("unsigned", "signatures", "hashes")}
    return encode_base64(hashlib.sha256(canonical_json(stripped)).digest())


def add_content_hash(event: JsonDict) -> None:
    event["hashes"] = {"sha256": compute_content_hash(event)}


def _same(value: Any) -> Any:
    return value


def _signable(event: JsonDict, version: RoomVersion) -> JsonDict:
    """The redacted event without `signatures` and `unsigned`: what is hashed and signed.
    Only encoded, never changed below the top level: its values are the event's own."""
    redacted = redact_with(event, version, _same)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return redacted


def compute_reference_hash(event: JsonDict, version: RoomVersion) -> bytes:
    """SHA-256 of the redacted event (spec, "Calculating the reference hash for an event")."""
    return hashlib.sha256(canonical_json(_signable(event, version))).digest()


def compute_event_id(event: JsonDict, version: RoomVersion) -> str:
    """`$` + the unpadded base64 reference hash: standard base64 in room version 3 (rooms/v3.md
    "Event IDs"), URL-safe from v4 (rooms/fragments/v4-event-ids.md).

    Room versions 1 and 2 do not derive IDs: see `event_id_of`.
    """
    if version.event_format is EventFormat.V1:
        raise ValueError(f"Room version {version.identifier} does not derive event IDs")
    urlsafe = version.event_format is not EventFormat.V3
    return "$" + encode_base64(compute_reference_hash(event, version), urlsafe=urlsafe)


def event_id_of(event: JsonDict, version: RoomVersion) -> str:
    """The event's ID: its `event_id` in room versions 1-2, the derived one from v3."""
    if version.event_format is EventFormat.V1:
        event_id = event.get("event_id")
        if not isinstance(event_id, str):
            raise ValueError("A room version 1-2 event has no event_id")
        return event_id
    return compute_event_id(event, version)


def _reference_ids(event: JsonDict, key: str, version: RoomVersion) -> list[str]:
    """The IDs in `prev_events` or `auth_events`; malformed entries are left out (the format
    check refuses them before anything relies on this)."""
    entries = event.get(key)
    if not isinstance(entries, list):
        return []
    if version.event_format is EventFormat.V1:
        return [
            e[0] for e in entries if isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
        ]
    return [e for e in entries if isinstance(e, str)]


def prev_event_ids(event: JsonDict, version: RoomVersion) -> list[str]:
    return _reference_ids(event, "prev_events", version)


def auth_event_ids(event: JsonDict, version: RoomVersion) -> list[str]:
    """The IDs in `auth_events`, as listed (in v12 the create event is implied, not listed)."""
    return _reference_ids(event, "auth_events", version)


def compute_room_id_v12(create_event: JsonDict, version: RoomVersion) -> str:
    """Room version 12: the room ID is the create event's ID with `!` instead of `$`."""
    if not version.room_id_is_create_event_hash:
        raise ValueError(f"Room version {version.identifier} does not derive room IDs")
    return "!" + encode_base64(compute_reference_hash(create_event, version), urlsafe=True)


def sign_event(
    event: JsonDict, server_name: str, signing_key: SigningKey, version: RoomVersion
) -> None:
    """Sign the redacted form of `event` and store the signature in `event["signatures"]`.

    The content hash must already be set (see `add_content_hash`): the signature covers the
    hashes, so a redacted copy still verifies (spec, "Adding hashes and signatures").
    """
    signature = signing_key.sign(canonical_json(_signable(event, version))).signature
    key_id = f"{signing_key.alg}:{signing_key.version}"
    signatures = event.setdefault("signatures", {})
    signatures.setdefault(server_name, {})[key_id] = encode_base64(signature)


def hash_and_sign_event(
    event: JsonDict, server_name: str, signing_key: SigningKey, version: RoomVersion
) -> None:
    """`add_content_hash` then `sign_event`, the order the spec requires."""
    add_content_hash(event)
    sign_event(event, server_name, signing_key, version)


def verify_event_signature(
    event: JsonDict, server_name: str, verify_key: VerifyKey, version: RoomVersion
) -> bool:
    """Whether `event` carries a valid signature by `verify_key` from `server_name`.

    The redacted form is checked, so this holds for the full event and for a redacted copy
    (spec, "Validating hashes and signatures on received events").
    """
    signatures = event.get("signatures")
    if not isinstance(signatures, dict):
        return False
    server_signatures = signatures.get(server_name)
    if not isinstance(server_signatures, dict):
        return False
    signature_b64 = server_signatures.get(f"{verify_key.alg}:{verify_key.version}")
    if not isinstance(signature_b64, str):
        return False
    try:
        verify_key.verify(canonical_json(_signable(event, version)), decode_base64(signature_b64))
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def check_event_size_and_shape(event: JsonDict, version: RoomVersion | None = None) -> None:
    """Enforce the spec's size limits and the types of the keys they apply to.

    A key over 255 bytes is `M_TOO_LARGE`, like the whole event: both are "Size limits".
    `version` None applies the strict canonical JSON rules of room version 6 and later.
    """
    event_type = event.get("type")
    if not isinstance(event_type, str):
        raise MatrixError(Codes.BAD_JSON, "Event 'type' must be a string")
    for key in ("sender", "room_id", "state_key", "event_id"):
        if key in event and not isinstance(event[key], str):
            raise MatrixError(Codes.BAD_JSON, f"Event '{key}' must be a string")
    for key in ("type", "sender", "room_id", "state_key", "event_id"):
        if key in event and len(event[key].encode()) > MAX_KEY_BYTES:
            raise MatrixError(
                Codes.TOO_LARGE, f"Event '{key}' is longer than {MAX_KEY_BYTES} bytes"
            )
    # Room versions 6+ require canonical JSON (rooms/fragments/v6-canonical-json.md): no
    # floats, integers within [-(2**53)+1, (2**53)-1]; otherwise 400 M_BAD_JSON.
    if version is None or version.strict_canonical_json:
        check_json_numbers(event)
    try:
        size = len(canonical_json(event))
    except (RecursionError, ValueError, TypeError) as e:
        raise MatrixError(Codes.BAD_JSON, "Event is not valid canonical JSON") from e
    if size > MAX_PDU_BYTES:
        raise MatrixError(Codes.TOO_LARGE, f"Event is larger than {MAX_PDU_BYTES} bytes")
