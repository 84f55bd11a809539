"""What other services contribute to a sync response besides room events.

Each source reads its own stream between two tokens; the sync service asks every source it
was given and places the answers (spec: /sync response). A source never blocks: waiting is
the sync service's job, and every source's stream wakes it through the notifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from homeserver.core.streams import StreamToken
from homeserver.core.types import JsonDict, Requester


class GlobalSource(Protocol):
    """A top-level section: ``account_data``, ``presence`` or ``to_device``."""

    async def global_events(
        self, requester: Requester, since: StreamToken | None, now: StreamToken
    ) -> list[JsonDict]: ...


class RoomSource(Protocol):
    """Per-room events outside the timeline: ``ephemeral`` or ``account_data``.

    Returns only the rooms that have something; with ``since`` None, everything current.
    """

    async def room_events(
        self,
        requester: Requester,
        room_ids: Sequence[str],
        since: StreamToken | None,
        now: StreamToken,
    ) -> dict[str, list[JsonDict]]: ...


class UnreadCounts(Protocol):
    """Per joined room, the keys ``unread_notifications`` and, when ``threads`` is asked
    (the filter's ``unread_thread_notifications``), ``unread_thread_notifications``; up to
    the positions ``at``."""

    async def unread_counts(
        self,
        requester: Requester,
        room_ids: Sequence[str],
        *,
        at: StreamToken,
        threads: bool = False,
    ) -> dict[str, JsonDict]: ...

    async def prepare(self, requester: Requester, room_ids: Sequence[str], at: StreamToken) -> None:
        """Before a long-poll waits: get ready to answer quickly when it is woken."""


class TopLevelSource(Protocol):
    """Top-level keys that are not event lists: ``device_lists``,
    ``device_one_time_keys_count``, ``device_unused_fallback_key_types``.

    Returns only keys with something to say. ``device_lists`` counts as news (a waiting
    long-poll answers at once), so it must hold only changes since ``since``; the key
    counts may come in every response (clients expect them) and never end a long-poll.
    """

    async def top_level(
        self, requester: Requester, since: StreamToken | None, now: StreamToken
    ) -> JsonDict: ...


class IgnoredUsers(Protocol):
    """Whose events a user has asked never to see (``m.ignored_user_list``)."""

    async def ignored_users(self, user_id: str) -> frozenset[str]: ...
