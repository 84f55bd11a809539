"""The PDU format: canonical JSON, content and reference hashes, redaction, signing, IDs.

Events are plain JSON objects in PDU form (spec, server-server API "PDUs"). In room versions 4
and later a PDU carries no `event_id`: the ID is derived from the reference hash. Callers must
not add one before hashing, since the v9 redaction rules (room version 10) keep a top-level
`event_id` and it would then change the hash.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

from canonicaljson import encode_canonical_json
from nacl.exceptions import CryptoError
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.types import JsonDict
from homeserver.events.room_versions import RedactionRules, RoomVersion

# spec, client-server API "Size limits": the whole PDU, signatures included, in canonical JSON.
MAX_PDU_BYTES = 65536
# spec, "Size limits": `type` and `state_key` at most 255 bytes; `sender`, `room_id` and
# `event_id` at most the identifier limit of the appendices, also 255 bytes.
MAX_KEY_BYTES = 255

# Top-level keys the redaction algorithm keeps (spec, rooms/fragments/v9-redactions.md and
# v11-redactions.md). v11 stops protecting `origin`, `membership` and `prev_state`.
_TOP_LEVEL_KEYS: dict[RedactionRules, frozenset[str]] = {
    RedactionRules.V9: frozenset(
        {
            "event_id",
            "type",
            "room_id",
            "sender",
            "state_key",
            "content",
            "hashes",
            "signatures",
            "depth",
            "prev_events",
            "prev_state",
            "auth_events",
            "origin",
            "origin_server_ts",
            "membership",
        }
    ),
    RedactionRules.V11: frozenset(
        {
            "event_id",
            "type",
            "room_id",
            "sender",
            "state_key",
            "content",
            "hashes",
            "signatures",
            "depth",
            "prev_events",
            "auth_events",
            "origin_server_ts",
        }
    ),
}

# Content keys kept per event type. v11: `m.room.power_levels` also keeps `invite`,
# `m.room.redaction` keeps `redacts`; `m.room.create` (all content) and the `signed` part of
# a member's `third_party_invite` are handled in `redact` itself.
_CONTENT_KEYS: dict[RedactionRules, dict[str, frozenset[str]]] = {
    RedactionRules.V9: {
        "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
        "m.room.create": frozenset({"creator"}),
        "m.room.join_rules": frozenset({"join_rule", "allow"}),
        "m.room.power_levels": frozenset(
            {
                "ban",
                "events",
                "events_default",
                "kick",
                "redact",
                "state_default",
                "users",
                "users_default",
            }
        ),
        "m.room.history_visibility": frozenset({"history_visibility"}),
    },
    RedactionRules.V11: {
        "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
        "m.room.join_rules": frozenset({"join_rule", "allow"}),
        "m.room.power_levels": frozenset(
            {
                "ban",
                "events",
                "events_default",
                "invite",
                "kick",
                "redact",
                "state_default",
                "users",
                "users_default",
            }
        ),
        "m.room.history_visibility": frozenset({"history_visibility"}),
        "m.room.redaction": frozenset({"redacts"}),
    },
}


def canonical_json(obj: Any) -> bytes:
    """Encode as canonical JSON (spec, appendices "Canonical JSON")."""
    return encode_canonical_json(obj)


def compute_content_hash(event: JsonDict) -> str:
    """The unpadded base64 SHA-256 content hash (spec, "Calculating the content hash")."""
    stripped = {k: v for k, v in event.items() if k not in ("unsigned", "signatures", "hashes")}
    return encode_base64(hashlib.sha256(canonical_json(stripped)).digest())


def add_content_hash(event: JsonDict) -> None:
    event["hashes"] = {"sha256": compute_content_hash(event)}


def redact(event: JsonDict, version: RoomVersion) -> JsonDict:
    """Apply the room version's redaction algorithm; returns a new dict, `event` is untouched."""
    return _redact(event, version, copy.deepcopy)


def _redact(event: JsonDict, version: RoomVersion, clone: Callable[[Any], Any]) -> JsonDict:
    """``redact`` with the kept values passed through ``clone``: a deep copy for a redacted
    event that lives on, as they are for one that is only encoded (hashing, signing)."""
    rules = version.redaction_rules
    redacted = {k: clone(v) for k, v in event.items() if k in _TOP_LEVEL_KEYS[rules]}
    if "content" not in event:
        return redacted
    content = event["content"] if isinstance(event["content"], dict) else {}
    event_type = event.get("type")
    if rules is RedactionRules.V11 and event_type == "m.room.create":
        new_content = clone(content)
    else:
        allowed = (
            _CONTENT_KEYS[rules].get(event_type, frozenset())
            if isinstance(event_type, str)
            else frozenset()
        )
        new_content = {k: clone(v) for k, v in content.items() if k in allowed}
        third_party_invite = content.get("third_party_invite")
        if (
            rules is RedactionRules.V11
            and event_type == "m.room.member"
            and isinstance(third_party_invite, dict)
        ):
            # v11: "it allows the `signed` key of the `third_party_invite` key", so that
            # a redacted third-party invite can still be authorised.
            new_content["third_party_invite"] = (
                {"signed": clone(third_party_invite["signed"])}
                if "signed" in third_party_invite
                else {}
            )
    redacted["content"] = new_content
    return redacted


def _same(value: Any) -> Any:
    return value


def _signable(event: JsonDict, version: RoomVersion) -> JsonDict:
    """The redacted event without `signatures` and `unsigned`: what is hashed and signed.
    Only encoded, never changed below the top level: its values are the event's own."""
    redacted = _redact(event, version, _same)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return redacted


def compute_reference_hash(event: JsonDict, version: RoomVersion) -> bytes:
    """SHA-256 of the redacted event (spec, "Calculating the reference hash for an event")."""
    return hashlib.sha256(canonical_json(_signable(event, version))).digest()


def compute_event_id(event: JsonDict, version: RoomVersion) -> str:
    """`$` + URL-safe unpadded base64 reference hash (rooms/fragments/v4-event-ids.md)."""
    return "$" + encode_base64(compute_reference_hash(event, version), urlsafe=True)


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


def check_event_size_and_shape(event: JsonDict) -> None:
    """Enforce the spec's size limits and the types of the keys they apply to.

    A key over 255 bytes is `M_TOO_LARGE`, like the whole event: both are "Size limits".
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
    check_json_numbers(event)
    try:
        size = len(canonical_json(event))
    except (RecursionError, ValueError, TypeError) as e:
        raise MatrixError(Codes.BAD_JSON, "Event is not valid canonical JSON") from e
    if size > MAX_PDU_BYTES:
        raise MatrixError(Codes.TOO_LARGE, f"Event is larger than {MAX_PDU_BYTES} bytes")
