"""Events, room state, memberships and the room graph: what commits together when an event
is persisted, and how it is read back.

``writing`` persists local events (``EventStore``), ``incoming`` events from other servers
with their verdict, ``graph`` keeps forward extremities, edges and auth chains, ``reading``
reads events and the stream's windows, ``state`` keeps state groups and current state,
``message`` is PostgreSQL's one-statement persist of a message.
"""

from __future__ import annotations

from homeserver.storage.events.graph import Extremity, referenced_ids
from homeserver.storage.events.incoming import IncomingEvent
from homeserver.storage.events.model import DuplicateTxn, NewEvent, StateKey, StateMap, StoredEvent
from homeserver.storage.events.reading import (
    SHARED_TIMELINE_MAX_EVENTS,
    WINDOW_MAX_EVENTS,
    WINDOWS_KEPT,
    StreamWindow,
)
from homeserver.storage.events.state import MAX_STATE_CHAIN
from homeserver.storage.events.writing import EventStore

__all__ = [
    "MAX_STATE_CHAIN",
    "SHARED_TIMELINE_MAX_EVENTS",
    "WINDOWS_KEPT",
    "WINDOW_MAX_EVENTS",
    "DuplicateTxn",
    "Extremity",
    "EventStore",
    "IncomingEvent",
    "NewEvent",
    "StateKey",
    "StateMap",
    "StoredEvent",
    "StreamWindow",
    "referenced_ids",
]
