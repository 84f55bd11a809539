"""Unread counts (spec: "Receiving notifications"), until push rules decide (issue 6).

A room's count is the events a client would badge (messages, encrypted events, stickers)
sent by others after the user's read mark; nothing is a highlight yet. Per-thread counts
(``unread_thread_notifications``) are not computed: the room count includes threads.
"""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.storage.receipts import ReceiptStore
from homeserver.types import JsonDict, Requester

# TODO(issue 6): push rules decide what notifies and what highlights.
COUNTED_TYPES = ("m.room.message", "m.room.encrypted", "m.sticker")


class UnreadCountService:
    """Implements the sync's ``UnreadCounts``: one query for all the rooms of a response."""

    def __init__(self, receipts: ReceiptStore) -> None:
        self._receipts = receipts

    async def unread_counts(self, requester: Requester, room_ids: Sequence[str]
                            ) -> dict[str, JsonDict]:
        counts = await self._receipts.count_unread(requester.user_id, room_ids, COUNTED_TYPES)
        return {room_id: {"notification_count": counts.get(room_id, 0), "highlight_count": 0}
                for room_id in room_ids}
