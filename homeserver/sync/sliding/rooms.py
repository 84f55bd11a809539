"""One room of a sliding sync response: what to send given what the connection has."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from homeserver.core.ids import RoomID
from homeserver.core.types import JsonDict, Requester
from homeserver.events.stripped import STRIPPED_STATE_TYPES
from homeserver.rooms.service import RoomService, position_token
from homeserver.rooms.visibility import Visibility
from homeserver.storage.events import EventStore, StateMap, StoredEvent
from homeserver.storage.rooms import Membership, RoomStore
from homeserver.storage.sliding_sync import RoomListEntry, SlidingSyncStore
from homeserver.sync.sliding.params import MEMBER, RoomParams
from homeserver.sync.sliding.room_list import bump_stamp
from homeserver.sync.sliding.state import RoomStatus, with_lazy

NAME = "m.room.name"
AVATAR = "m.room.avatar"
MAX_HEROES = 5  # as /sync's m.heroes
# State whose change may change what a client shows as the room's name, avatar or heroes.
_META_TYPES = frozenset({NAME, AVATAR, MEMBER})


@dataclass(frozen=True, slots=True)
class RoomUpdate:
    """A room's entry in the response (None: nothing to send) and the status it leaves the
    connection in."""

    entry: JsonDict | None
    status: RoomStatus


@dataclass(frozen=True, slots=True)
class Prefetched:
    """What the rooms of one response sent from scratch need, read for all of them at
    once (a window of 20 rooms: a handful of statements, not a handful per room)."""

    # Newest first, at least ``timeline_limit + 1`` of each room (up to the response's
    # position).
    timelines: dict[str, list[StoredEvent]] = field(default_factory=dict)
    # The state events they ask for, their names and avatars.
    events: dict[str, StoredEvent] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # Those of the timelines' events that have a child (whose bundles are worth reading);
    # None: not known, look.
    parents: frozenset[str] | None = None


NOTHING_PREFETCHED = Prefetched()


class RoomBuilder:
    def __init__(
        self,
        events: EventStore,
        rooms: RoomStore,
        store: SlidingSyncStore,
        room_service: RoomService,
        visibility: Visibility,
    ) -> None:
        self._events = events
        self._rooms = rooms
        self._store = store
        self._room_service = room_service
        self._visibility = visibility

    async def prefetch(
        self,
        user_id: str,
        rooms: Sequence[tuple[RoomListEntry, RoomParams]],
        upto: int,
    ) -> Prefetched:
        """Reads at once what ``build`` needs for joined rooms that it sends from scratch:
        their timelines, room versions, member counts, and the state events that their
        ``required_state``, names, avatars and lazy members want (a few more than
        ``build`` sends does no harm)."""
        if not rooms:
            return NOTHING_PREFETCHED
        ids = [room.room_id for room, _ in rooms]
        limit = max(params.timeline_limit for _, params in rooms) + 1
        timelines = await self._events.get_latest_of_rooms(ids, upto=upto, limit=limit)
        await self._rooms.load_room_versions(ids)
        wanted: list[str] = []
        for room, params in rooms:
            raw = timelines[room.room_id]
            if not raw:
                continue
            state = await self._events.get_state_ids(raw[0].state_group)
            rs = params.required_state
            wanted += [
                event_id
                for (kind, key), event_id in state.items()
                if rs.wants(kind, key, user_id) or (kind in (NAME, AVATAR) and key == "")
            ]
            if rs.lazy_members:
                shown = raw[: params.timeline_limit]
                mentioned = {e.sender for e in shown} | {
                    e.state_key for e in shown if e.type == MEMBER and e.state_key
                }
                wanted += [state[(MEMBER, m)] for m in mentioned if (MEMBER, m) in state]
        events = await self._events.get_events(wanted)
        counts = await self._rooms.count_memberships_of(ids)
        parents = await self._events.with_children(e for raw in timelines.values() for e in raw)
        return Prefetched(timelines, events, counts, frozenset(parents))

    async def _events_of(
        self, loaded: Prefetched, event_ids: Iterable[str]
    ) -> dict[str, StoredEvent]:
        """The events by ID: prefetched ones as they are, the rest read."""
        ids = list(event_ids)
        found = {i: loaded.events[i] for i in ids if i in loaded.events}
        missing = [i for i in ids if i not in found]
        if missing:
            found.update(await self._events.get_events(missing))
        return found

    async def build(
        self,
        requester: Requester,
        room: RoomListEntry,
        params: RoomParams,
        prev: RoomStatus | None,
        *,
        after: int | None,
        upto: int,
        changed: bool,
        is_dm: bool,
        ignored: frozenset[str] = frozenset(),
        loaded: Prefetched = NOTHING_PREFETCHED,
    ) -> RoomUpdate:
        """``changed``: the room has something new in ``(after, upto]`` (events, or the
        user's own read receipt, which changes its counts); ``ignored``: users whose
        events the user does not see."""
        config = params.required_state.key()
        initial = prev is None or (
            prev.membership != room.membership and room.membership in ("join", "invite", "knock")
        )
        if room.membership in ("invite", "knock"):
            status = RoomStatus(True, upto, room.membership, config)
            if not initial:
                return RoomUpdate(None, status)
            return RoomUpdate(await self._invited(requester, room, is_dm), status)
        if prev is None or initial:
            # Never sent, or sent with another membership (an invite since joined): from
            # scratch.
            return await self._room(
                requester,
                room,
                params,
                None,
                None,
                upto,
                after,
                is_dm=is_dm,
                ignored=ignored,
                loaded=loaded,
            )
        since = after if prev.live and after is not None else prev.position
        config_changed = prev.config != config
        # Synapse's behaviour, which Element X expects: a room already sent, now asked for
        # with a longer timeline (opened from the room list), gets that many of its newest
        # events again, flagged as an expanded timeline.
        expanded = params.timeline_limit > prev.timeline_limit
        left_before = room.membership not in ("join", "invite", "knock") and (
            since >= room.stream_ordering
        )
        if left_before or (prev.live and not changed and not config_changed and not expanded):
            return RoomUpdate(None, prev)
        return await self._room(
            requester,
            room,
            params,
            prev,
            since,
            upto,
            after,
            full_state=config_changed,
            expanded=expanded,
            is_dm=is_dm,
            ignored=ignored,
            loaded=loaded,
        )

    async def _room(
        self,
        requester: Requester,
        room: RoomListEntry,
        params: RoomParams,
        prev: RoomStatus | None,
        since: int | None,
        upto: int,
        after: int | None,
        *,
        full_state: bool = True,
        expanded: bool = False,
        is_dm: bool,
        ignored: frozenset[str],
        loaded: Prefetched,
    ) -> RoomUpdate:
        """``prev`` None: the room from scratch. Else ``since``: what the client has of it
        (the timeline starts there unless ``expanded``; state is what changed since, or all
        that is asked for with ``full_state``). ``after``: the request's events position
        (what is newer is ``num_live``)."""
        user_id = requester.user_id
        joined = room.membership == "join"
        # A room left since: what the user saw up to the leave, and nothing after.
        room_upto = upto if joined else min(upto, room.stream_ordering)
        limit = params.timeline_limit
        raw_prefetched = False  # the timeline's events are among ``loaded.timelines``
        if not joined and prev is not None and prev.membership == "invite":
            leave = await self._events.get_event(room.event_id)
            raw = [leave] if leave is not None else []  # a rejected invite: only the leave
        elif (since is None or expanded) and room_upto == upto and room.room_id in loaded.timelines:
            raw = loaded.timelines[room.room_id][: limit + 1]
            raw_prefetched = True
        elif since is None or expanded:
            raw = await self._events.get_room_events(
                room.room_id, upto=room_upto, limit=limit + 1, descending=True
            )
        else:
            raw = await self._events.get_recent_events(room.room_id, since, room_upto, limit + 1)
        limited = len(raw) > limit
        raw = list(reversed(raw[:limit]))
        timeline = await self._visibility.filter_events(
            user_id,
            # spec, ignoring users: their state events are still sent, the rest is hidden.
            [e for e in raw if e.sender not in ignored or e.state_key is not None],
            _membership(user_id, room),
        )
        state_now = await self._state_at(room.room_id, raw, room_upto)
        rs = params.required_state
        in_timeline = {e.event_id for e in raw}
        if prev is None or full_state:
            wanted = {k: v for k, v in state_now.items() if rs.wants(k[0], k[1], user_id)}
        else:
            assert since is not None
            new = [e for e in raw if e.stream_ordering > since]
            moved = limited or expanded or any(e.state_key is not None for e in new)
            before = await self._state_at_position(room.room_id, since) if moved else state_now
            wanted = {
                k: v
                for k, v in state_now.items()
                if before.get(k) != v and rs.wants(k[0], k[1], user_id) and v not in in_timeline
            }
        lazy_sent: set[str] = set()
        if rs.lazy_members:
            # MSC4186 $LAZY: the members the timeline mentions, as senders or as targets of
            # membership changes, each once per connection.
            mentioned = {e.sender for e in timeline} | {
                e.state_key for e in timeline if e.type == MEMBER and e.state_key
            }
            known = set(prev.lazy_members) if prev is not None and not full_state else set()
            for member_id in mentioned - known:
                member = state_now.get((MEMBER, member_id))
                if member is not None:
                    wanted[(MEMBER, member_id)] = member
                    lazy_sent.add(member_id)
        state_events = await self._events_of(loaded, wanted.values())
        room_version = await self._room_service.room_version(RoomID(room.room_id))
        entry: JsonDict = {"bump_stamp": bump_stamp(room)}
        if prev is None:
            entry["initial"] = True
        if expanded:
            entry["unstable_expanded_timeline"] = True
            entry["expanded_timeline"] = True
        if (
            prev is None
            or full_state
            or limited
            or any(e.type in _META_TYPES for e in raw if e.state_key is not None)
        ):
            entry.update(await self._meta(user_id, room.room_id, state_now, loaded))
        if state_events:
            entry["required_state"] = await self._room_service.serialize(
                requester, list(state_events.values()), room_version, with_room_id=False
            )
        if timeline:
            prefetched = raw_prefetched and loaded.parents is not None
            entry["timeline"] = await self._room_service.serialize(
                requester,
                timeline,
                room_version,
                with_room_id=False,
                may_have_children=not prefetched
                or any(e.event_id in (loaded.parents or ()) for e in timeline),
            )
        entry["prev_batch"] = position_token(raw[0].stream_ordering - 1 if raw else room_upto)
        entry["limited"] = limited
        entry["num_live"] = (
            0 if after is None else sum(1 for e in timeline if e.stream_ordering > after)
        )
        if is_dm:
            entry["is_dm"] = True
        keep = prev is not None and not full_state
        status = RoomStatus(
            True,
            upto,
            room.membership,
            rs.key(),
            prev.lazy_members if prev is not None and keep else (),
            _timeline_limit(prev, limit, limited),
        )
        if lazy_sent:
            status = with_lazy(status, lazy_sent)
        return RoomUpdate(entry, status)

    async def _meta(
        self, user_id: str, room_id: str, state: StateMap, prefetched: Prefetched
    ) -> JsonDict:
        """name, avatar, heroes (for a room without a name) and member counts."""
        out: JsonDict = {}
        ids = [state[k] for k in ((NAME, ""), (AVATAR, "")) if k in state]
        loaded = await self._events_of(prefetched, ids)
        name_event = loaded.get(state.get((NAME, ""), ""))
        avatar_event = loaded.get(state.get((AVATAR, ""), ""))
        name = name_event.content.get("name") if name_event else None
        if isinstance(name, str) and name:
            out["name"] = name
        else:
            heroes = await self._store.get_heroes(room_id, user_id, MAX_HEROES)
            if heroes:
                out["heroes"] = [
                    {
                        "user_id": h.user_id,
                        **({"displayname": h.displayname} if h.displayname else {}),
                        **({"avatar_url": h.avatar_url} if h.avatar_url else {}),
                    }
                    for h in heroes
                ]
        avatar = avatar_event.content.get("url") if avatar_event else None
        if isinstance(avatar, str) and avatar:
            out["avatar"] = avatar
        counts = prefetched.counts.get(room_id)
        if counts is None:
            counts = await self._rooms.count_memberships(room_id)
        out["joined_count"] = counts.get("join", 0)
        out["invited_count"] = counts.get("invite", 0)
        return out

    async def _invited(self, requester: Requester, room: RoomListEntry, is_dm: bool) -> JsonDict:
        """An invite (or a knock): the stripped state the spec gives invitees, with the
        inviter's own membership (as Synapse sends it), which names a room without a name."""
        state = await self._events.get_current_state_ids(room.room_id, STRIPPED_STATE_TYPES)
        ids = [i for (_, k), i in state.items() if k == ""] + [room.event_id]
        if room.sender != requester.user_id:
            inviter = await self._events.get_current_state_event(room.room_id, MEMBER, room.sender)
            if inviter is not None:
                ids.append(inviter.event_id)
        loaded = await self._events.get_events(ids)
        stripped = [
            {
                "type": e.type,
                "state_key": e.state_key or "",
                "sender": e.sender,
                "content": e.content,
            }
            for e in loaded.values()
        ]
        entry: JsonDict = {
            "initial": True,
            "bump_stamp": bump_stamp(room),
            "invite_state": stripped,
        }
        name = next((e.content.get("name") for e in loaded.values() if e.type == NAME), None)
        if isinstance(name, str) and name:
            entry["name"] = name
        else:
            heroes = _stripped_heroes(stripped, requester.user_id)
            if heroes:
                entry["heroes"] = heroes
        avatar = next((e.content.get("url") for e in loaded.values() if e.type == AVATAR), None)
        if isinstance(avatar, str) and avatar:
            entry["avatar"] = avatar
        if is_dm:
            entry["is_dm"] = True
        return entry

    async def _state_at(self, room_id: str, raw: list[StoredEvent], upto: int) -> StateMap:
        """The state after the newest event at or below ``upto``."""
        if raw:  # the room's newest event at or below ``upto``
            return await self._events.get_state_ids(raw[-1].state_group)
        return await self._state_at_position(room_id, upto)

    async def _state_at_position(self, room_id: str, position: int) -> StateMap:
        last = await self._events.get_room_events(room_id, upto=position, limit=1, descending=True)
        if not last:
            return {}
        return await self._events.get_state_ids(last[0].state_group)


def _stripped_heroes(stripped: list[JsonDict], me: str) -> list[JsonDict]:
    """The heroes of an invite or a knock: every member the stripped state lists (joined
    or invited, not the user), with the name and avatar it gives them."""
    heroes: list[JsonDict] = []
    for event in stripped:
        content = event["content"]
        if (
            event["type"] != MEMBER
            or event["state_key"] == me
            or content.get("membership") not in ("join", "invite")
        ):
            continue
        hero: JsonDict = {"user_id": event["state_key"]}
        displayname, avatar_url = content.get("displayname"), content.get("avatar_url")
        if isinstance(displayname, str) and displayname:
            hero["displayname"] = displayname
        if isinstance(avatar_url, str) and avatar_url:
            hero["avatar_url"] = avatar_url
        heroes.append(hero)
    return heroes[:MAX_HEROES]


def _membership(user_id: str, room: RoomListEntry) -> Membership:
    return Membership(
        room.room_id,
        user_id,
        room.membership,
        room.event_id,
        room.sender,
        room.stream_ordering,
        room.forgotten,
    )


def _timeline_limit(prev: RoomStatus | None, limit: int, limited: bool) -> int:
    """How much timeline the client holds of the room, for telling an expansion: at least
    what it had, unless this response cut the timeline shorter (Synapse's rule)."""
    if prev is None or limit > prev.timeline_limit or limited:
        return limit
    return prev.timeline_limit
