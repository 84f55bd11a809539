"""Stripped state (client-server API, "Stripped state"): the state events an invited or
knocking user, and their server, are told of a room they are not in."""

from __future__ import annotations

STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)
