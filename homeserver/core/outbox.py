"""What the services that make EDUs tell federation: the protocol of the outbound queue
(``homeserver/federation/outbox.py``), so that typing, receipts, presence, device lists and
to-device messages reach other servers without those services importing federation.

Every method is called for changes of our own users only, after the change is committed;
the queue decides which servers to tell (those sharing the room, or the user's server)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from homeserver.core.types import JsonDict


class EduOutbox(Protocol):
    async def typing(self, room_id: str, user_id: str, typing: bool) -> None: ...

    async def read_receipt(
        self, room_id: str, user_id: str, event_id: str, thread_id: str | None, ts: int
    ) -> None: ...

    async def presence(self, user_id: str, content: JsonDict) -> None:
        """``content``: the user's presence as a client's m.presence event has it."""
        ...

    async def device_list_changed(
        self, user_id: str, stream_id: int, device_id: str | None, *, deleted: bool
    ) -> None:
        """A device of ``user_id`` changed (or was ``deleted``) at device-list position
        ``stream_id``; no device: the cross-signing keys changed."""
        ...

    async def to_device(
        self,
        sender: str,
        event_type: str,
        message_id: str,
        messages: Mapping[str, Mapping[str, JsonDict]],
    ) -> None:
        """Messages for remote users ({user_id: {device_id or "*": content}})."""
        ...
