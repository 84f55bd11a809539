"""What the event store takes and gives: stored and new events, and their columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.core import jsonutil
from homeserver.core.types import JsonDict
from homeserver.storage.push import PushAction
from homeserver.storage.schema import (
    BACKFILL_BASE,
    events,
)


def is_served_position(stream_ordering: int) -> bool:
    """A position of an event shown to clients: on the events stream (above 0), or
    backfilled (at or below ``BACKFILL_BASE``); those in between are never served."""
    return stream_ordering > 0 or stream_ordering <= BACKFILL_BASE


StateKey = tuple[str, str]
StateMap = dict[StateKey, str]  # (type, state_key) -> event_id


@dataclass(frozen=True, slots=True)
class StoredEvent:
    stream_ordering: int
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    origin_server_ts: int
    depth: int
    pdu: JsonDict
    unsigned: JsonDict
    state_group: int
    redacted_by: str | None
    device_id: str | None
    txn_id: str | None

    @property
    def content(self) -> JsonDict:
        content: JsonDict = self.pdu.get("content", {})
        return content

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def served(self) -> bool:
        """False for an outlier, a rejected or a soft-failed event: never shown to clients
        (they are numbered below the events stream, above ``BACKFILL_BASE``; backfilled
        events, at or below it, are served)."""
        return is_served_position(self.stream_ordering)


class DuplicateTxn(Exception):
    """The event's transaction ID was taken by another event: nothing was persisted."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event ready to persist, with what its persistence must also record."""

    pdu: JsonDict
    event_id: str
    room_id: str
    unsigned: JsonDict
    device_id: str | None = None
    txn_id: str | None = None
    txn_scope: str | None = None
    # The members it notifies (push rules evaluated before persisting; issue 6).
    push_actions: tuple[PushAction, ...] = ()
    # The state before it when its prev_events are several forward extremities whose states
    # differ (resolved by the builder); None when it is the room's current state, the usual
    # case of one extremity.
    prev_state: StateMap | None = None
    # The room's current state after it when that is not the state after it: it takes only
    # some of more forward extremities than an event may cite, and the room's state is the
    # resolution of all of theirs (the builder's).
    current_state: StateMap | None = None


EVENT_COLUMNS = (
    events.c.stream_ordering,
    events.c.event_id,
    events.c.room_id,
    events.c.type,
    events.c.state_key,
    events.c.sender,
    events.c.origin_server_ts,
    events.c.depth,
    events.c.json,
    events.c.unsigned_json,
    events.c.state_group,
    events.c.redacted_by,
    events.c.device_id,
    events.c.txn_id,
)


# Hot statements, built once: building a statement costs more than running it on SQLite.


def to_event(r: Any) -> StoredEvent:
    return StoredEvent(
        int(r.stream_ordering),
        r.event_id,
        r.room_id,
        r.type,
        r.state_key,
        r.sender,
        int(r.origin_server_ts),
        int(r.depth),
        jsonutil.loads(r.json),
        jsonutil.loads(r.unsigned_json) if r.unsigned_json else {},
        int(r.state_group),
        r.redacted_by,
        r.device_id,
        r.txn_id,
    )


def redacts_of(pdu: JsonDict) -> str | None:
    value = pdu.get("content", {}).get("redacts", pdu.get("redacts"))
    return value if isinstance(value, str) else None
