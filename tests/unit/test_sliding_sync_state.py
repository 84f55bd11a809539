"""Sliding sync's pure parts: required_state matching, connection state, positions."""

from __future__ import annotations

import pytest

from homeserver.core.errors import MatrixError
from homeserver.core.streams import StreamToken
from homeserver.sync.sliding.params import RequiredState
from homeserver.sync.sliding.state import ConnectionState, Position, RoomStatus, with_lazy


def test_required_state_matching() -> None:
    rs = RequiredState.of([("m.room.name", ""), ("m.room.member", "$ME"), ("*", "k")])
    assert rs.wants("m.room.name", "", "@me:x")
    assert not rs.wants("m.room.name", "other", "@me:x")
    assert rs.wants("m.room.member", "@me:x", "@me:x")
    assert not rs.wants("m.room.member", "@you:x", "@me:x")
    assert rs.wants("org.example", "k", "@me:x")  # a wildcard type
    assert not rs.lazy_members
    everything = RequiredState.of([("*", "*")])
    assert everything.wants("m.room.member", "@you:x", "@me:x")
    lazy = RequiredState.of([("m.room.member", "$LAZY")])
    assert lazy.lazy_members and not lazy.wants("m.room.member", "@you:x", "@me:x")


def test_required_state_key_ignores_order_and_union_merges() -> None:
    a = RequiredState.of([("a", "1"), ("b", "2")])
    b = RequiredState.of([("b", "2"), ("a", "1")])
    assert a.key() == b.key()
    merged = a.union(RequiredState.of([("c", "*")]))
    assert merged.wants("c", "anything", "@me:x") and merged.wants("a", "1", "@me:x")


def test_connection_state_round_trip() -> None:
    state = ConnectionState(
        {
            "!a:x": RoomStatus(True, 5, "join", "cfg", ("@u:x",), 10),
            "!b:x": RoomStatus(False, 3, "invite", "cfg", (), 0),
            "!c:x": RoomStatus(True, 7, "leave", "other", (), 1),
        }
    )
    assert ConnectionState.from_json(state.to_json()) == state


def test_lazy_members_are_bounded_newest_kept() -> None:
    status = RoomStatus(True, 1, "join", "")
    for i in range(150):
        status = with_lazy(status, {f"@u{i:03}:x"})
    assert len(status.lazy_members) == 100
    assert status.lazy_members[-1] == "@u149:x"


def test_positions() -> None:
    token = StreamToken.parse("s1_2_3")
    pos = Position(42, token)
    assert Position.parse(pos.serialize()) == pos
    for bad in ("", "42", "/s1", "x/s1", "4" * 19 + "/s1", "42/", "42/zz"):
        with pytest.raises(MatrixError):
            Position.parse(bad)
