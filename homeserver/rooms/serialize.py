"""Stored events in the client format (spec: ClientEvent)."""

from __future__ import annotations

from homeserver.core.types import JsonDict, Requester
from homeserver.events.format import redact
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.storage.events import StoredEvent


def client_event(
    event: StoredEvent,
    now_ms: int,
    room_version: str,
    *,
    requester: Requester | None = None,
    redaction: StoredEvent | None = None,
    with_room_id: bool = True,
) -> JsonDict:
    """``redaction`` is the event that redacted this one, if ``redacted_by`` is set."""
    pdu = event.pdu
    content = pdu.get("content", {})
    if event.redacted_by is not None:
        content = redact(pdu, KNOWN_ROOM_VERSIONS[room_version]).get("content", {})
    out: JsonDict = {
        "content": content,
        "event_id": event.event_id,
        "origin_server_ts": event.origin_server_ts,
        "sender": event.sender,
        "type": event.type,
    }
    if with_room_id:
        out["room_id"] = event.room_id
    if event.state_key is not None:
        out["state_key"] = event.state_key
    if event.type == "m.room.redaction" and "redacts" in pdu:
        # v1-v10 keep it at the top level; rooms/v11.md: "servers should add a `redacts`
        # property to the `content` ... in older room versions" for newer clients.
        out["redacts"] = pdu["redacts"]
        if event.redacted_by is None:
            out["content"] = {**content, "redacts": pdu["redacts"]}
    elif event.type == "m.room.redaction" and "redacts" in content:
        out["redacts"] = content["redacts"]  # spec: v11+ clients may still read it at the top
    unsigned: JsonDict = dict(event.unsigned)
    unsigned["age"] = max(0, now_ms - event.origin_server_ts)
    if (
        requester is not None
        and event.txn_id is not None
        and event.sender == requester.user_id
        and event.device_id == requester.device_id
    ):
        unsigned["transaction_id"] = event.txn_id
    if event.redacted_by is not None and redaction is not None:
        unsigned["redacted_because"] = client_event(
            redaction, now_ms, room_version, with_room_id=with_room_id
        )
    out["unsigned"] = unsigned
    return out
