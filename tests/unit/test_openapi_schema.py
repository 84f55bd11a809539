"""The spec-driven response checker, against real v1.19 definitions and hand-made bodies."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urldefrag, urljoin

import pytest

from tests.openapi_schema import SpecIndex, assert_response_matches, load_spec_index

ROOM_ID = "!room:localhost"

MESSAGE_EVENT: dict[str, Any] = {
    "event_id": "$event1",
    "sender": "@alice:localhost",
    "origin_server_ts": 1_700_000_000_000,
    "type": "m.room.message",
    "content": {"msgtype": "m.text", "body": "hello"},
    "unsigned": {"age": 12, "transaction_id": "txn1"},
}

CREATE_EVENT: dict[str, Any] = {
    "event_id": "$create",
    "sender": "@alice:localhost",
    "origin_server_ts": 1_699_999_999_000,
    "type": "m.room.create",
    "state_key": "",
    "content": {"room_version": "11", "creator": "@alice:localhost"},
}

# /sync events are ClientEventWithoutRoomID: event_id, type, sender, origin_server_ts and
# content are required; room_id is optional there (implied by the `rooms.join` key).
SYNC_BODY: dict[str, Any] = {
    "next_batch": "s72595_4483_1934",
    "rooms": {
        "join": {
            ROOM_ID: {
                "summary": {"m.heroes": ["@bob:localhost"], "m.joined_member_count": 2},
                "state": {"events": [CREATE_EVENT]},
                "timeline": {"events": [MESSAGE_EVENT], "limited": False, "prev_batch": "t1"},
                "ephemeral": {"events": []},
                "account_data": {"events": []},
                "unread_notifications": {"highlight_count": 0, "notification_count": 1},
            }
        },
        "invite": {},
        "knock": {},
        "leave": {},
    },
    "presence": {"events": []},
    "account_data": {"events": []},
    "to_device": {"events": []},
    "device_lists": {"changed": [], "left": []},
    "device_one_time_keys_count": {"signed_curve25519": 20},
}


def sync_body() -> dict[str, Any]:
    return copy.deepcopy(SYNC_BODY)


def test_valid_sync_passes() -> None:
    assert_response_matches("GET", "/_matrix/client/v3/sync", 200, sync_body())


def test_sync_with_query_string_and_room_id_in_events_passes() -> None:
    body = sync_body()
    body["rooms"]["join"][ROOM_ID]["timeline"]["events"][0]["room_id"] = ROOM_ID
    assert_response_matches("get", "/_matrix/client/v3/sync?since=s1&timeout=0", 200, body)


def test_sync_without_next_batch_fails() -> None:
    body = sync_body()
    del body["next_batch"]
    with pytest.raises(AssertionError, match="'next_batch' is a required property"):
        assert_response_matches("GET", "/_matrix/client/v3/sync", 200, body)


def test_sync_event_without_sender_fails_with_its_path() -> None:
    body = sync_body()
    del body["rooms"]["join"][ROOM_ID]["timeline"]["events"][0]["sender"]
    with pytest.raises(AssertionError) as raised:
        assert_response_matches("GET", "/_matrix/client/v3/sync", 200, body)
    message = str(raised.value)
    assert "'sender' is a required property" in message
    assert "timeline.events[0]" in message


def test_sync_timestamp_beyond_int64_fails() -> None:
    body = sync_body()
    body["rooms"]["join"][ROOM_ID]["timeline"]["events"][0]["origin_server_ts"] = 2**63
    with pytest.raises(AssertionError, match="int64"):
        assert_response_matches("GET", "/_matrix/client/v3/sync", 200, body)


def test_create_room() -> None:
    assert_response_matches("POST", "/_matrix/client/v3/createRoom", 200, {"room_id": "!a:b"})
    with pytest.raises(AssertionError, match="'room_id' is a required property"):
        assert_response_matches("POST", "/_matrix/client/v3/createRoom", 200, {})
    with pytest.raises(AssertionError, match="does not match"):
        assert_response_matches("POST", "/_matrix/client/v3/createRoom", 200, {"room_id": "a:b"})


def test_register_and_login() -> None:
    assert_response_matches(
        "POST",
        "/_matrix/client/v3/register",
        200,
        {"user_id": "@alice:localhost", "access_token": "syt_abc", "device_id": "ABCDEF"},
    )
    login = {"user_id": "@alice:localhost", "access_token": "syt_abc", "device_id": "ABCDEF"}
    assert_response_matches("POST", "/_matrix/client/v3/login", 200, login)
    with pytest.raises(AssertionError, match="'device_id' is a required property"):
        del login["device_id"]
        assert_response_matches("POST", "/_matrix/client/v3/login", 200, login)


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/rooms/!abc:localhost/messages",
        "/_matrix/client/v3/rooms/%21abc%3Alocalhost/messages?dir=b&limit=10",
        "http://localhost:8008/_matrix/client/v3/rooms/!abc:localhost/messages",
    ],
)
def test_messages(path: str) -> None:
    # Unlike /sync, /messages returns ClientEvents, which require room_id.
    event = {**MESSAGE_EVENT, "room_id": "!abc:localhost"}
    body = {"chunk": [event], "start": "t1", "end": "t2"}
    assert_response_matches("GET", path, 200, body)
    del event["room_id"]
    with pytest.raises(AssertionError, match="'room_id' is a required property"):
        assert_response_matches("GET", path, 200, body)


def test_error_bodies_and_referenced_responses() -> None:
    forbidden = {"errcode": "M_FORBIDDEN", "error": "You are not in this room"}
    assert_response_matches("POST", "/_matrix/client/v3/createRoom", 403, forbidden)
    # The media files' 429 is `$ref: '#/components/responses/rateLimited'`.
    limited = {"errcode": "M_LIMIT_EXCEEDED", "error": "Slow down", "retry_after_ms": 2000}
    assert_response_matches("POST", "/_matrix/media/v3/upload", 429, limited)
    with pytest.raises(AssertionError, match="'errcode' is a required property"):
        assert_response_matches("POST", "/_matrix/media/v3/upload", 429, {"error": "x"})


def test_percent_encoded_and_decoded_slash_in_last_parameter() -> None:
    body = {"event_id": "$abc"}
    encoded = "/_matrix/client/v3/rooms/%21a%3Ab/state/m.room.name/a%2Fb"
    assert_response_matches("PUT", encoded, 200, body)
    assert_response_matches("PUT", "/_matrix/client/v3/rooms/!a:b/state/m.room.name/a/b", 200, body)
    assert_response_matches("PUT", "/_matrix/client/v3/rooms/!a:b/state/m.room.name/", 200, body)


def test_matrix_formats_are_asserted() -> None:
    path = "/_matrix/client/v3/profile/@alice:localhost"
    assert_response_matches("GET", path, 200, {"avatar_url": "mxc://localhost/abc"})
    with pytest.raises(AssertionError, match="mx-mxc-uri"):
        assert_response_matches("GET", path, 200, {"avatar_url": "https://localhost/abc"})


def test_unknown_path_raises() -> None:
    with pytest.raises(AssertionError, match="no operation"):
        assert_response_matches("GET", "/_matrix/client/v3/no_such_endpoint", 200, {})
    with pytest.raises(AssertionError, match="no operation"):
        assert_response_matches("DELETE", "/_matrix/client/v3/sync", 200, {})


def test_undocumented_status_or_missing_schema_raises() -> None:
    with pytest.raises(AssertionError, match="documents no 418 response"):
        assert_response_matches("POST", "/_matrix/client/v3/createRoom", 418, {})
    with pytest.raises(AssertionError, match="no application/json schema"):
        assert_response_matches("GET", "/_matrix/media/v3/download/localhost/abc", 200, {})


def test_base_paths_come_from_each_files_servers() -> None:
    templates = {op.template for op in load_spec_index().operations}
    assert "/_matrix/client/v3/sync" in templates
    assert "/_matrix/client/v1/rooms/{roomId}/hierarchy" in templates
    assert "/_matrix/media/v3/upload" in templates
    assert "/_matrix/client/versions" in templates
    assert "/.well-known/matrix/client" in templates


def _expand_example(index: SpecIndex, node: object, base: str) -> object:
    """Spec examples splice files in with `$ref` plus sibling keys; the spec's build merges them."""
    if isinstance(node, list):
        return [_expand_example(index, item, base) for item in node]
    if not isinstance(node, dict):
        return node
    expanded = {k: _expand_example(index, v, base) for k, v in node.items() if k != "$ref"}
    if "$ref" not in node:
        return expanded
    target_uri = urljoin(base, node["$ref"])
    target = _expand_example(index, index.resolve(target_uri), urldefrag(target_uri)[0])
    assert isinstance(target, dict)
    return {**target, **expanded}


def test_every_json_example_in_the_spec_validates() -> None:
    """Guards the checker itself (refs, formats) against rejecting what the spec calls valid."""
    index = load_spec_index()
    checked = 0
    for operation in index.operations:
        for status in operation.responses:
            try:
                schema_uri = index.response_schema_uri(operation, int(status))
            except AssertionError:
                continue  # redirects, downloads and bodiless responses
            media_uri = schema_uri.removesuffix("/schema")
            for name, example in (index.resolve(media_uri).get("examples") or {}).items():
                example_uri = f"{media_uri}/examples/{name}"
                while "$ref" in example:
                    example_uri = urljoin(example_uri, example["$ref"])
                    example = index.resolve(example_uri)
                value = _expand_example(index, example["value"], example_uri)
                errors = index.errors(operation, int(status), value)
                assert not errors, (operation.template, status, errors[0].message)
                checked += 1
    assert checked > 200
