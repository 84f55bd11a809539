"""Inbound EDUs of a transaction (spec, server-server API "EDUs"): typing, receipts,
presence, device list and signing key updates, to-device messages.

An EDU speaks for users, and only a user's own server may speak for them: one about another
server's user is ignored. A bad EDU (wrong shape, unknown type, a room or user we do not
know) is ignored with a log line; it never fails the transaction.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from homeserver.core.errors import MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.types import JsonDict
from homeserver.e2ee.to_device import ToDeviceService
from homeserver.ephemeral.presence import PRESENCE_STATES, PresenceService
from homeserver.ephemeral.receipts import ReceiptService
from homeserver.ephemeral.typing import TypingService
from homeserver.federation.outbox import (
    DEVICE_LIST_UPDATE,
    DIRECT_TO_DEVICE,
    PRESENCE,
    RECEIPT,
    SIGNING_KEY_UPDATE,
    TYPING,
)
from homeserver.federation.remote_devices import BadEdu, RemoteDeviceLists

logger = logging.getLogger(__name__)

# Bounds on one EDU's parts (a transaction holds at most 100 EDUs).
MAX_PRESENCE_PUSH = 1000
MAX_RECEIPT_ROOMS = 100
MAX_RECEIPT_USERS = 1000
MAX_EVENT_IDS = 10
MAX_TO_DEVICE_USERS = 1000
MAX_STATUS_MSG_BYTES = 2000
MAX_TYPE_BYTES = 255  # spec: an event type is at most 255 bytes
MAX_MESSAGE_ID_BYTES = 255


class ServerAcls(Protocol):
    """Server ACLs of rooms (``homeserver/federation/acl.py``'s ``RoomAcls``)."""

    async def allows(self, room_id: str, server_name: str) -> bool: ...


def _user(value: Any, origin: str) -> UserID:
    """A user of ``origin``; BadEdu otherwise (a forged EDU speaks for another server)."""
    if not isinstance(value, str):
        raise BadEdu("user ID is not a string")
    try:
        user = UserID.parse(value)
    except MatrixError as e:
        raise BadEdu("not a user ID") from e
    if user.server_name != origin:
        raise BadEdu("a user of another server")
    return user


def _room(value: Any) -> RoomID:
    if not isinstance(value, str):
        raise BadEdu("room ID is not a string")
    try:
        return RoomID.parse(value)
    except MatrixError as e:
        raise BadEdu("not a room ID") from e


def _object(value: Any, what: str) -> JsonDict:
    if not isinstance(value, dict):
        raise BadEdu(f"{what} is not an object")
    return value


class InboundEdus:
    def __init__(
        self,
        typing: TypingService,
        receipts: ReceiptService,
        presence: PresenceService,
        to_device: ToDeviceService,
        devices: RemoteDeviceLists,
        acls: ServerAcls,
    ) -> None:
        self._acls = acls
        self._typing = typing
        self._receipts = receipts
        self._presence = presence
        self._to_device = to_device
        self._devices = devices

    async def receive(self, origin: str, edu: Any) -> None:
        """Apply one EDU from ``origin``; anything wrong with it is logged and ignored."""
        edu_type = edu.get("edu_type") if isinstance(edu, dict) else None
        try:
            content = _object(edu.get("content") if isinstance(edu, dict) else None, "content")
            handler = self._handlers.get(edu_type) if isinstance(edu_type, str) else None
            if handler is None:
                logger.debug("edu of unknown type", extra={"origin": origin})
                return
            await handler(self, origin, content)
        except BadEdu as e:
            logger.info(
                "edu ignored", extra={"origin": origin, "edu_type": edu_type, "why": str(e)}
            )

    async def _on_typing(self, origin: str, content: JsonDict) -> None:
        room_id = _room(content.get("room_id"))
        user_id = _user(content.get("user_id"), origin)
        typing = content.get("typing")
        if not isinstance(typing, bool):
            raise BadEdu("typing is not a boolean")
        await self._check_acl(room_id, origin)
        if not await self._typing.set_remote_typing(room_id, user_id, typing):
            raise BadEdu("the user is not joined to the room")

    async def _on_receipt(self, origin: str, content: JsonDict) -> None:
        if len(content) > MAX_RECEIPT_ROOMS:
            raise BadEdu("too many rooms")
        for room, by_type in content.items():
            room_id = _room(room)
            read = _object(by_type, "receipts").get("m.read")
            if read is None:
                continue  # other receipt types are not shared between servers here
            try:
                await self._check_acl(room_id, origin)
            except BadEdu as e:
                logger.info("receipts ignored", extra={"origin": origin, "why": str(e)})
                continue
            users = _object(read, "m.read")
            if len(users) > MAX_RECEIPT_USERS:
                raise BadEdu("too many users")
            for user, receipt in users.items():
                try:
                    await self._one_receipt(origin, room_id, user, receipt)
                except BadEdu as e:
                    # One bad receipt does not lose the others of the EDU.
                    logger.info("receipt ignored", extra={"origin": origin, "why": str(e)})

    async def _one_receipt(self, origin: str, room_id: RoomID, user: str, receipt: Any) -> None:
        user_id = _user(user, origin)
        receipt = _object(receipt, "receipt")
        event_ids = receipt.get("event_ids")
        if (
            not isinstance(event_ids, list)
            or not 0 < len(event_ids) <= MAX_EVENT_IDS
            or not all(isinstance(e, str) for e in event_ids)
        ):
            raise BadEdu("event_ids is not a list of event IDs")
        data = _object(receipt.get("data", {}), "data")
        ts = data.get("ts", 0)
        if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
            raise BadEdu("ts is not a timestamp")
        thread_id = data.get("thread_id")
        if thread_id is not None and (not isinstance(thread_id, str) or not thread_id):
            raise BadEdu("thread_id is not a string")
        if not await self._receipts.put_remote_receipt(room_id, user_id, event_ids, thread_id, ts):
            raise BadEdu("the user is not joined or the event is unknown")

    async def _check_acl(self, room_id: str, origin: str) -> None:
        """spec, m.room.server_acl: a denied server's EDUs about the room are ignored."""
        if not await self._acls.allows(room_id, origin):
            raise BadEdu("the server is denied by the room's ACL")

    async def _on_presence(self, origin: str, content: JsonDict) -> None:
        push = content.get("push")
        if not isinstance(push, list) or len(push) > MAX_PRESENCE_PUSH:
            raise BadEdu("push is not a list within bounds")
        for item in push:
            try:
                await self._one_presence(origin, _object(item, "presence update"))
            except BadEdu as e:
                logger.info("presence update ignored", extra={"origin": origin, "why": str(e)})

    async def _one_presence(self, origin: str, item: JsonDict) -> None:
        user_id = _user(item.get("user_id"), origin)
        presence = item.get("presence")
        if presence not in PRESENCE_STATES:
            raise BadEdu("presence is not a presence state")
        ago = item.get("last_active_ago")
        if ago is not None and (not isinstance(ago, int) or isinstance(ago, bool) or ago < 0):
            raise BadEdu("last_active_ago is not a duration")
        status_msg = item.get("status_msg")
        if status_msg is not None and (
            not isinstance(status_msg, str)
            or len(status_msg.encode()) > MAX_STATUS_MSG_BYTES
            or "\0" in status_msg
        ):
            raise BadEdu("status_msg is not a string within bounds")
        active = item.get("currently_active", False)
        if not isinstance(active, bool):
            raise BadEdu("currently_active is not a boolean")
        await self._presence.put_remote(user_id, str(presence), status_msg or None, ago, active)

    async def _on_to_device(self, origin: str, content: JsonDict) -> None:
        sender = _user(content.get("sender"), origin)
        event_type = content.get("type")
        if not isinstance(event_type, str) or not 0 < len(event_type.encode()) <= MAX_TYPE_BYTES:
            raise BadEdu("type is not an event type")
        message_id = content.get("message_id")
        if (
            not isinstance(message_id, str)
            or not 0 < len(message_id.encode()) <= MAX_MESSAGE_ID_BYTES
        ):
            raise BadEdu("message_id is not a string within bounds")
        messages = _object(content.get("messages"), "messages")
        if len(messages) > MAX_TO_DEVICE_USERS:
            raise BadEdu("too many users")
        checked: dict[str, dict[str, JsonDict]] = {}
        for user, by_device in messages.items():
            if not isinstance(user, str):
                raise BadEdu("user ID is not a string")
            try:
                UserID.parse(user)
            except MatrixError as e:
                raise BadEdu("not a user ID") from e
            checked[user] = {
                str(d): _object(c, "message") for d, c in _object(by_device, "devices").items()
            }
        await self._to_device.receive_remote(sender, event_type, message_id, checked)

    async def _on_device_list_update(self, origin: str, content: JsonDict) -> None:
        await self._devices.on_device_list_update(origin, content)

    async def _on_signing_key_update(self, origin: str, content: JsonDict) -> None:
        await self._devices.on_signing_key_update(origin, content)

    _handlers = {
        TYPING: _on_typing,
        RECEIPT: _on_receipt,
        PRESENCE: _on_presence,
        DIRECT_TO_DEVICE: _on_to_device,
        DEVICE_LIST_UPDATE: _on_device_list_update,
        SIGNING_KEY_UPDATE: _on_signing_key_update,
    }
