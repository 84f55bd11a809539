"""Send-to-device messaging: queued per device, delivered once through sync's ``to_device``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.outbox import EduOutbox
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.to_device import ToDeviceStore
from homeserver.wakeups.notifier import Notifier

# spec, Send-to-Device "Server behaviour": limit each response; 100 is the recommended value.
MAX_PER_SYNC = 100
MAX_TYPE_BYTES = 255  # spec, size limits: an event type is at most 255 bytes
MAX_TXN_ID_BYTES = 255  # ours: transaction IDs are stored; clients send short ones


class ToDeviceService:
    """Implements the sync source ``GlobalSource`` for the ``to_device`` section."""

    def __init__(
        self,
        store: ToDeviceStore,
        notifier: Notifier,
        clock: Clock,
        server_name: str,
        outbox: EduOutbox | None = None,
    ) -> None:
        self._store = store
        # Remote users' messages go to their servers (m.direct_to_device); None: dropped.
        self._outbox = outbox
        self._notifier = notifier
        self._clock = clock
        self._server_name = server_name

    async def send(
        self,
        requester: Requester,
        event_type: str,
        txn_id: str,
        messages: Mapping[str, Mapping[str, JsonDict]],
    ) -> None:
        """spec: PUT /sendToDevice/{eventType}/{txnId}; idempotent per device and txnId."""
        if len(event_type.encode()) > MAX_TYPE_BYTES:
            raise MatrixError(Codes.INVALID_PARAM, f"Type is longer than {MAX_TYPE_BYTES} bytes")
        if not event_type or not txn_id:
            raise MatrixError(Codes.INVALID_PARAM, "Empty event type or transaction ID")
        if len(txn_id.encode()) > MAX_TXN_ID_BYTES:
            raise MatrixError(
                Codes.INVALID_PARAM, f"Transaction ID is longer than {MAX_TXN_ID_BYTES} bytes"
            )
        local: dict[str, Mapping[str, JsonDict]] = {}
        remote: dict[str, Mapping[str, JsonDict]] = {}
        for user_id, by_device in messages.items():
            if UserID.parse(user_id).server_name == self._server_name:
                local[user_id] = by_device
            else:
                remote[user_id] = by_device
        result = await self._store.add_messages(
            requester.user_id, requester.device_id, txn_id, event_type, local, self._clock.now_ms()
        )
        if result is None:
            return  # a retry of a transaction already done
        position, recipients = result
        if recipients:
            await self._notifier.notify(Stream.TO_DEVICE, position, user_ids=recipients)
        if remote and self._outbox is not None:
            # The message ID is unique per sending server (spec, m.direct_to_device): the
            # transaction is, per device, and the store let it through once.
            message_id = f"{requester.device_id}.{txn_id}"
            await self._outbox.to_device(requester.user_id, event_type, message_id, remote)

    async def receive_remote(
        self,
        sender: str,
        event_type: str,
        message_id: str,
        messages: Mapping[str, Mapping[str, JsonDict]],
    ) -> None:
        """An ``m.direct_to_device`` EDU from the sender's server: our users' messages are
        queued; a ``message_id`` seen before from that sender is not queued again."""
        local = {
            u: d for u, d in messages.items() if UserID.parse(u).server_name == self._server_name
        }
        # The sender's server stands in for the device in the transaction's key.
        origin = UserID.parse(sender).server_name
        result = await self._store.add_messages(
            sender, f"federation:{origin}", message_id, event_type, local, self._clock.now_ms()
        )
        if result is None:
            return
        position, recipients = result
        if recipients:
            await self._notifier.notify(Stream.TO_DEVICE, position, user_ids=recipients)

    async def global_events(
        self,
        requester: Requester,
        since: StreamToken | None,
        now: StreamToken,
        *,
        limit: int = MAX_PER_SYNC,
    ) -> list[JsonDict]:
        """``GlobalSource``: the device's pending messages, oldest first, at most ``limit``.

        Syncing from ``since`` acknowledges what the response that gave ``since`` carried.
        """
        messages = await self._store.deliver(
            requester.user_id,
            requester.device_id,
            acknowledged=since.get(Stream.TO_DEVICE) if since is not None else None,
            upto=now.get(Stream.TO_DEVICE),
            limit=limit,
        )
        return [{"type": m.type, "sender": m.sender, "content": m.content} for m in messages]

    async def delete_for_devices(self, user_id: UserID, device_ids: Sequence[str]) -> None:
        """Deleted devices take their pending messages with them."""
        await self._store.delete_for_devices(user_id, device_ids)
