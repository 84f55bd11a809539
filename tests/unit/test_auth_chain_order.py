"""auth_chain_rejections in room version 12, where the create event is never among an
event's auth_events: however the events are given, the create event is checked first and
the events it authorises are not rejected for coming before it."""

from __future__ import annotations

from homeserver.core.types import JsonDict
from homeserver.events.format import add_content_hash, compute_event_id, compute_room_id_v12
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.events.validation import auth_chain_rejections

V12 = KNOWN_ROOM_VERSIONS["12"]
ALICE = "@alice:a.test"


def finished(pdu: JsonDict) -> tuple[str, JsonDict]:
    add_content_hash(pdu)
    pdu["signatures"] = {}
    return compute_event_id(pdu, V12), pdu


def test_a_v12_chain_given_create_last_is_accepted() -> None:
    create: JsonDict = {
        "type": "m.room.create",
        "state_key": "",
        "sender": ALICE,
        "content": {"room_version": "12"},
        "origin_server_ts": 1,
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
    }
    create_id, create = finished(create)
    room_id = compute_room_id_v12(create, V12)
    join_id, join = finished(
        {
            "room_id": room_id,
            "type": "m.room.member",
            "state_key": ALICE,
            "sender": ALICE,
            "content": {"membership": "join"},
            "origin_server_ts": 2,
            "depth": 2,
            "prev_events": [create_id],
            "auth_events": [],
        }
    )
    topic_id, topic = finished(
        {
            "room_id": room_id,
            "type": "m.room.topic",
            "state_key": "",
            "sender": ALICE,
            "content": {"topic": "t"},
            "origin_server_ts": 3,
            "depth": 3,
            "prev_events": [join_id],
            "auth_events": [join_id],
        }
    )
    assert auth_chain_rejections({topic_id: topic, join_id: join, create_id: create}, V12) == {}
    # Without the create event, what it authorises is rejected.
    rejected = auth_chain_rejections({topic_id: topic, join_id: join}, V12)
    assert set(rejected) == {topic_id, join_id}
