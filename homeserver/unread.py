"""Unread counts (spec: "Receiving notifications"), from the push actions of each event.

An event counts for a user when their push rules made it notify them (``highlight_count``:
with the highlight tweak) and it lies after their read mark: the later of their unthreaded
``m.read`` / ``m.read.private`` receipt and their own latest event in the room, and, for an
event in a thread (the main timeline is the thread "main"), their receipt in that thread.
Per-thread counts (``unread_thread_notifications``) split the room's count by thread.
Events from users they ignore never count (push actions are not even made for them; these
skip the ones made before the user ignored the sender).
"""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.push.ignored import IgnoreLists
from homeserver.storage.push import PushStore
from homeserver.types import JsonDict, Requester

MAIN_THREAD = "main"


def _counts(notifications: int, highlights: int) -> JsonDict:
    return {"notification_count": notifications, "highlight_count": highlights}


class UnreadCountService:
    """Implements the sync's ``UnreadCounts``: one query for all the rooms of a response."""

    def __init__(self, store: PushStore, ignored: IgnoreLists) -> None:
        self._store = store
        self._ignored = ignored

    async def unread_counts(self, requester: Requester, room_ids: Sequence[str], *,
                            threads: bool = False) -> dict[str, JsonDict]:
        """Per room: ``unread_notifications``, and with ``threads`` the main timeline's only,
        the threads' in ``unread_thread_notifications`` (those with something unread)."""
        found = await self._store.count_unread(
            requester.user_id, room_ids, await self._ignored.ignored_users(requester.user_id))
        out: dict[str, JsonDict] = {}
        for room_id in room_ids:
            by_thread = found.get(room_id, {})
            if not threads:
                out[room_id] = {"unread_notifications": _counts(
                    sum(n for n, _ in by_thread.values()),
                    sum(h for _, h in by_thread.values()))}
                continue
            entry: JsonDict = {"unread_notifications": _counts(*by_thread.get(MAIN_THREAD,
                                                                              (0, 0)))}
            in_threads = {t: _counts(n, h) for t, (n, h) in by_thread.items()
                          if t != MAIN_THREAD}
            if in_threads:
                entry["unread_thread_notifications"] = in_threads
            out[room_id] = entry
        return out

    async def total_unread(self, user_id: str, room_ids: Sequence[str]) -> int:
        """Notifications across the rooms (a push's ``counts.unread``)."""
        found = await self._store.count_unread(user_id, room_ids,
                                               await self._ignored.ignored_users(user_id))
        return sum(n for threads in found.values() for n, _ in threads.values())
