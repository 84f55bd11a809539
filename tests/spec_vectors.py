"""The signing test vectors of the spec's appendices ("Signing Events"): the key and the two
events before hashing and signing, shared by the event-format and room-version tests."""

from __future__ import annotations

from signedjson.key import decode_signing_key_base64

from homeserver.core.types import JsonDict

SPEC_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
SPEC_KEY = decode_signing_key_base64("ed25519", "1", SPEC_SEED)


def spec_minimal_event() -> JsonDict:
    """The "minimally-sized event" vector."""
    return {
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "signatures": {},
        "hashes": {},
        "type": "X",
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 3,
        "unsigned": {"age_ts": 1000000},
    }


def spec_message_event() -> JsonDict:
    """The "event containing redactable content" vector."""
    return {
        "content": {"body": "Here is the message content"},
        "event_id": "$0:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "type": "m.room.message",
        "room_id": "!r:domain",
        "sender": "@u:domain",
        "signatures": {},
        "unsigned": {"age_ts": 1000000},
    }
