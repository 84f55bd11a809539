"""What a sliding sync request asks for, once parsed: lists, room subscriptions, extensions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

WILDCARD = "*"
LAZY = "$LAZY"  # MSC4186: the members who sent the timeline's events
ME = "$ME"  # MSC4186: the requester's own user ID
MEMBER = "m.room.member"


@dataclass(frozen=True, slots=True)
class RequiredState:
    """``required_state`` as a map from event type to state keys; ``*`` is a wildcard for
    either, ``$LAZY`` (for members) loads the timeline senders, ``$ME`` is the requester."""

    keys: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> RequiredState:
        keys: dict[str, set[str]] = {}
        for event_type, state_key in pairs:
            keys.setdefault(event_type, set()).add(state_key)
        return cls({t: frozenset(k) for t, k in keys.items()})

    def union(self, other: RequiredState) -> RequiredState:
        keys = {t: set(k) for t, k in self.keys.items()}
        for event_type, state_keys in other.keys.items():
            keys.setdefault(event_type, set()).update(state_keys)
        return RequiredState({t: frozenset(k) for t, k in keys.items()})

    @property
    def lazy_members(self) -> bool:
        return LAZY in self.keys.get(MEMBER, ())

    @property
    def is_empty(self) -> bool:
        return not self.keys

    def wants(self, event_type: str, state_key: str, me: str) -> bool:
        """Whether the state event (type, state_key) is asked for, lazy members aside."""
        for wanted in (self.keys.get(event_type), self.keys.get(WILDCARD)):
            if wanted and (
                WILDCARD in wanted or state_key in wanted or (state_key == me and ME in wanted)
            ):
                return True
        return False

    def key(self) -> str:
        """A canonical string of the request: the same for the same set, whatever the order."""
        return "|".join(f"{t}\x00{k}" for t in sorted(self.keys) for k in sorted(self.keys[t]))


@dataclass(frozen=True, slots=True)
class RoomParams:
    """What to send of each room: shared by lists and room subscriptions."""

    timeline_limit: int
    required_state: RequiredState

    def union(self, other: RoomParams) -> RoomParams:
        return RoomParams(
            max(self.timeline_limit, other.timeline_limit),
            self.required_state.union(other.required_state),
        )


@dataclass(frozen=True, slots=True)
class ListFilters:
    """Every field set must hold (AND); an unset field filters nothing (MSC4186)."""

    is_dm: bool | None = None
    is_invite: bool | None = None
    is_encrypted: bool | None = None
    room_types: frozenset[str | None] | None = None
    not_room_types: frozenset[str | None] | None = None
    spaces: frozenset[str] | None = None
    # Room tags (``m.tag``): any of ``tags``, none of ``not_tags`` (which wins).
    tags: frozenset[str] | None = None
    not_tags: frozenset[str] | None = None
    # A case-insensitive substring of the room's computed name.
    room_name_like: str | None = None

    @property
    def needs_tags(self) -> bool:
        return self.tags is not None or self.not_tags is not None

    @property
    def needs_room_facts(self) -> bool:
        """Whether the filters read the rooms' state (encryption, create event type)."""
        return (
            self.is_encrypted is not None
            or self.room_types is not None
            or self.not_room_types is not None
        )


@dataclass(frozen=True, slots=True)
class ListParams:
    room: RoomParams
    # Inclusive index ranges; None: every room of the list.
    ranges: tuple[tuple[int, int], ...] | None
    filters: ListFilters


@dataclass(frozen=True, slots=True)
class ScopedExtension:
    """An extension applied to some lists (by name) and room subscriptions (by room ID);
    ``*`` is all of them (the default)."""

    lists: frozenset[str] = frozenset({WILDCARD})
    rooms: frozenset[str] = frozenset({WILDCARD})


@dataclass(frozen=True, slots=True)
class ToDeviceParams:
    limit: int
    since: int | None


@dataclass(frozen=True, slots=True)
class ThreadSubscriptionsParams:
    limit: int


@dataclass(frozen=True, slots=True)
class Extensions:
    """The enabled extensions; None (or False) for those not enabled."""

    to_device: ToDeviceParams | None = None
    e2ee: bool = False
    account_data: ScopedExtension | None = None
    receipts: ScopedExtension | None = None
    typing: ScopedExtension | None = None
    thread_subscriptions: ThreadSubscriptionsParams | None = None


@dataclass(frozen=True, slots=True)
class SlidingSyncRequest:
    conn_id: str
    lists: Mapping[str, ListParams]
    room_subscriptions: Mapping[str, RoomParams]
    extensions: Extensions
