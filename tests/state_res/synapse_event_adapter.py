"""Hash, redact and sign events with Synapse's event code; run with the Synapse virtualenv's
python.

    python synapse_event_adapter.py < events.jsonl > answers.jsonl

Each input line is `{"index", "room_version", "event"}`. Each output line gives, from Synapse:
the content hash, the redacted form, the reference hash, the event ID (and, for a v12 create
event, the room ID) and the signature with the appendices' seed key as `ed25519:1` of
`domain`; or the error. A line with `"verify": {"server", "key_id", "key"}` instead asks
whether Synapse accepts the event as a PDU from that server: parsed as federation parses it,
its content hash and the server's signature checked. This file imports Synapse, never the
homeserver: it runs in another interpreter.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from typing import Any

SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"


def answer(item: dict[str, Any], signing_key: Any) -> dict[str, Any]:
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
    from synapse.crypto.event_signing import (
        compute_content_hash,
        compute_event_reference_hash,
        compute_event_signature,
    )
    from synapse.events import make_event_from_dict
    from synapse.events.utils import prune_event
    from synapse.synapse_rust.events import redact_event_dict
    from unpaddedbase64 import encode_base64

    version = KNOWN_ROOM_VERSIONS[item["room_version"]]
    event_dict = item["event"]
    _, content_hash = compute_content_hash(dict(event_dict), hashlib.sha256)
    out: dict[str, Any] = {
        "content_hash": encode_base64(content_hash),
        "redacted": redact_event_dict(version, event_dict),
        "signatures": compute_event_signature(version, dict(event_dict), "domain", signing_key),
    }
    event = make_event_from_dict(json.loads(json.dumps(event_dict)), version)
    _, reference = compute_event_reference_hash(event)
    out["reference_hash"] = encode_base64(reference)
    out["event_id"] = event.event_id
    out["room_id"] = event.room_id
    # prune_event works on the event object: its PDU JSON must agree with redact_event_dict.
    out["pruned"] = prune_event(event).get_pdu_json()
    return out


def check(item: dict[str, Any]) -> dict[str, Any]:
    from signedjson.key import decode_verify_key_base64
    from signedjson.sign import SignatureVerifyException, verify_signed_json
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
    from synapse.crypto.event_signing import check_event_content_hash
    from synapse.federation.federation_base import event_from_pdu_json
    from synapse.synapse_rust.events import redact_event_dict

    version = KNOWN_ROOM_VERSIONS[item["room_version"]]
    verify = item["verify"]
    event = event_from_pdu_json(json.loads(json.dumps(item["event"])), version)
    key = decode_verify_key_base64("ed25519", verify["key_id"].split(":", 1)[1], verify["key"])
    redacted = redact_event_dict(version, item["event"])
    redacted.pop("unsigned", None)
    try:
        verify_signed_json(redacted, verify["server"], key)
        signed = True
    except SignatureVerifyException:
        signed = False
    return {
        "event_id": event.event_id,
        "room_id": event.room_id,
        "content_hash_ok": check_event_content_hash(event),
        "signature_ok": signed,
    }


def main() -> None:
    import synapse
    from signedjson.key import decode_signing_key_base64

    signing_key = decode_signing_key_base64("ed25519", "1", SEED)
    print(json.dumps({"synapse_version": synapse.__version__.split()[0]}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        try:
            result = check(item) if "verify" in item else answer(item, signing_key)
        except Exception:
            result = {"error": traceback.format_exc()}
        result["index"] = item.get("index")
        sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
