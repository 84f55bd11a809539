"""Sliding sync extensions: to-device (MSC3885), e2ee (MSC3884), account data (MSC3959),
receipts (MSC3960) and typing (MSC3961), read from the same sources as /sync; thread
subscriptions (MSC4308) from the thread_subscriptions stream."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.thread_subscriptions import serialize_changes, token
from homeserver.storage.thread_subscriptions import SubscriptionChange
from homeserver.sync.sliding.params import WILDCARD, Extensions, ScopedExtension
from homeserver.sync.sliding.room_list import ListResult
from homeserver.sync.sources import GlobalSource, RoomSource, TopLevelSource


class ToDeviceSource(Protocol):
    """The device's pending to-device messages (``ToDeviceService``), at most ``limit``."""

    async def global_events(
        self, requester: Requester, since: StreamToken | None, now: StreamToken, *, limit: int
    ) -> list[JsonDict]: ...


class ThreadSubscriptionSource(Protocol):
    """The user's latest ``limit`` thread subscription changes in ``(after, upto]``, oldest
    first (``ThreadSubscriptionStore``)."""

    async def changes(
        self, user_id: str, *, after: int, upto: int, limit: int
    ) -> list[SubscriptionChange]: ...


@dataclass(frozen=True, slots=True)
class ExtensionSources:
    to_device: ToDeviceSource
    e2ee: TopLevelSource
    global_account_data: GlobalSource
    room_account_data: RoomSource
    receipts: RoomSource
    typing: RoomSource
    thread_subscriptions: ThreadSubscriptionSource


@dataclass(frozen=True, slots=True)
class ExtensionScope:
    """The rooms of this response that extensions may cover."""

    lists: Mapping[str, ListResult]
    subscriptions: Collection[str]
    # Rooms sent from scratch now -> the IDs of the timeline events sent with them: their
    # extension data is from scratch too.
    initial: Mapping[str, frozenset[str]]
    joined: Collection[str]

    def rooms(self, scope: ScopedExtension) -> list[str]:
        found: set[str] = set()
        for name, result in self.lists.items():
            if WILDCARD in scope.lists or name in scope.lists:
                found |= result.room_ids
        for room_id in self.subscriptions:
            if WILDCARD in scope.rooms or room_id in scope.rooms:
                found.add(room_id)
        return sorted(found.intersection(self.joined))


class ExtensionBuilder:
    def __init__(self, sources: ExtensionSources) -> None:
        self._sources = sources

    async def build(
        self,
        requester: Requester,
        ext: Extensions,
        since: StreamToken | None,
        now: StreamToken,
        scope: ExtensionScope,
    ) -> tuple[JsonDict, bool]:
        """The ``extensions`` object and whether it carries anything new (a long-poll
        answers at once for news; key counts alone are not)."""
        out: JsonDict = {}
        news = False
        s = self._sources
        if ext.to_device is not None:
            td = ext.to_device
            from_token = StreamToken({Stream.TO_DEVICE: td.since}) if td.since is not None else None
            events = await s.to_device.global_events(requester, from_token, now, limit=td.limit)
            out["to_device"] = {"next_batch": str(now.get(Stream.TO_DEVICE)), "events": events}
            news = news or bool(events)
        if ext.e2ee:
            found = await s.e2ee.top_level(requester, since, now)
            e2ee: JsonDict = {
                "device_one_time_keys_count": found.get("device_one_time_keys_count", {}),
                "device_unused_fallback_key_types": found.get(
                    "device_unused_fallback_key_types", []
                ),
            }
            if "device_lists" in found:
                e2ee["device_lists"] = found["device_lists"]
                news = True
            out["e2ee"] = e2ee
        if ext.account_data is not None:
            global_events = await s.global_account_data.global_events(requester, since, now)
            rooms = await self._by_room(
                s.room_account_data, requester, scope, ext.account_data, since, now
            )
            out["account_data"] = {"global": global_events, "rooms": rooms}
            news = news or bool(global_events) or bool(rooms)
        if ext.receipts is not None:
            found_receipts = await self._by_room(
                s.receipts, requester, scope, ext.receipts, since, now
            )
            receipts: JsonDict = {}
            for room_id, events in found_receipts.items():
                content = _merge_receipts(events)
                if since is None or room_id in scope.initial:
                    content = _for_timeline(
                        content, scope.initial.get(room_id, frozenset()), requester.user_id
                    )
                if content:
                    receipts[room_id] = {"type": "m.receipt", "content": content}
            out["receipts"] = {"rooms": receipts}
            news = news or bool(receipts)
        if ext.typing is not None:
            found_typing = await self._by_room(s.typing, requester, scope, ext.typing, since, now)
            typing = {room_id: events[-1] for room_id, events in found_typing.items() if events}
            out["typing"] = {"rooms": typing}
            news = news or bool(typing)
        if ext.thread_subscriptions is not None:
            # MSC4308: the latest `limit` changes since the connection's position (all of
            # them from the start on a new connection); `prev_batch` when there may be older
            # ones, to fetch from /unstable/io.element.msc4308/thread_subscriptions.
            after = since.get(Stream.THREAD_SUBSCRIPTIONS) if since is not None else 0
            changes = await s.thread_subscriptions.changes(
                requester.user_id,
                after=after,
                upto=now.get(Stream.THREAD_SUBSCRIPTIONS),
                limit=ext.thread_subscriptions.limit,
            )
            thread_subscriptions = serialize_changes(changes)
            if len(changes) == ext.thread_subscriptions.limit:
                thread_subscriptions["prev_batch"] = token(changes[0].stream_id - 1)
            out["thread_subscriptions"] = thread_subscriptions
            news = news or bool(changes)
        return out, news

    async def _by_room(
        self,
        source: RoomSource,
        requester: Requester,
        scope: ExtensionScope,
        ext: ScopedExtension,
        since: StreamToken | None,
        now: StreamToken,
    ) -> dict[str, list[JsonDict]]:
        """The source's events of the rooms in scope: rooms sent from scratch now get
        everything current, the others what moved since the request's position."""
        rooms = scope.rooms(ext)
        fresh = [r for r in rooms if since is None or r in scope.initial]
        known = [r for r in rooms if since is not None and r not in scope.initial]
        out: dict[str, list[JsonDict]] = {}
        if fresh:
            out.update(await source.room_events(requester, fresh, None, now))
        if known:
            out.update(await source.room_events(requester, known, since, now))
        return out


def _for_timeline(content: JsonDict, timeline: frozenset[str], me: str) -> JsonDict:
    """A room sent from scratch gets the receipts on the timeline events sent with it and
    the user's own wherever they are (Synapse's rule): not every member's latest."""
    out: JsonDict = {}
    for event_id, by_type in content.items():
        for receipt_type, by_user in by_type.items():
            kept = by_user if event_id in timeline else {u: by_user[u] for u in by_user if u == me}
            if kept:
                out.setdefault(event_id, {})[receipt_type] = kept
    return out


def _merge_receipts(events: list[JsonDict]) -> JsonDict:
    """One ``m.receipt`` per room (MSC3960) from /sync's one per room and thread."""
    merged: JsonDict = {}
    for event in events:
        for event_id, by_type in event.get("content", {}).items():
            target = merged.setdefault(event_id, {})
            for receipt_type, by_user in by_type.items():
                target.setdefault(receipt_type, {}).update(by_user)
    return merged
