"""The outbound EDU queue: what our users' typing, receipts, presence, device lists and
to-device messages become for other servers (``EduOutbox``, called by those services).

Each EDU is queued in the database per destination (``FederationQueueStore``) and sent by
the federation sender with the next transaction to that server. Typing, receipts and
presence replace a queued EDU of the same subject (a destination that is down gets the
latest state, not the history): typing per room and user, receipts per room, user and
thread, presence per user. A device list update replaces the queued one about the same
device (its keys are read as it is sent), and past ``MAX_DEVICE_UPDATES_PER_USER`` about one
user they become one that makes the destination resync the user's list. Signing key updates
are one per user. To-device messages are each kept until sent: they must not be lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from homeserver.core import jsonutil
from homeserver.core.clock import Clock
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict
from homeserver.storage.federation_queue import FederationQueueStore

TYPING = "m.typing"
RECEIPT = "m.receipt"
PRESENCE = "m.presence"
SIGNING_KEY_UPDATE = "m.signing_key_update"
DEVICE_LIST_UPDATE = "m.device_list_update"
DIRECT_TO_DEVICE = "m.direct_to_device"
# Device list updates about one user queued for one destination at most: past it (a
# destination down for long, a user whose devices churn), only the newest stays, marked
# RESYNC, and is sent with a prev_id the destination cannot know, so it fetches the user's
# whole list (spec, m.device_list_update; Synapse prunes its outbound pokes the same way).
MAX_DEVICE_UPDATES_PER_USER = 100
# A key of ours in a queued update's content, taken out as it is sent.
RESYNC = "resync"

logger = logging.getLogger(__name__)


def server_of(user_id: str) -> str:
    return UserID(user_id).server_name


class FederationOutbox:
    """Implements ``homeserver.core.outbox.EduOutbox``."""

    def __init__(
        self,
        store: FederationQueueStore,
        server_name: str,
        clock: Clock,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._server_name = server_name
        self._clock = clock
        # Wakes this worker's sender (another worker's finds the queue at its next poll).
        self._wake = wake

    async def _servers_in_rooms(self, room_ids: Iterable[str]) -> set[str]:
        remote = await self._store.get_remote_members(list(room_ids), self._server_name)
        servers = {server_of(u) for users in remote.values() for u in users}
        servers.discard(self._server_name)
        return servers

    async def _queue(
        self, destinations: Iterable[str], edu_type: str, content: JsonDict, key: str | None
    ) -> None:
        targets = set(destinations)
        if not targets:
            return
        await self._store.queue_edu(
            targets, edu_type, jsonutil.dumps_str(content), key, self._clock.now_ms()
        )
        self._wake()

    async def typing(self, room_id: str, user_id: str, typing: bool) -> None:
        await self._queue(
            await self._servers_in_rooms((room_id,)),
            TYPING,
            {"room_id": room_id, "user_id": user_id, "typing": typing},
            f"typing {room_id} {user_id}",
        )

    async def read_receipt(
        self, room_id: str, user_id: str, event_id: str, thread_id: str | None, ts: int
    ) -> None:
        data: JsonDict = {"ts": ts}
        if thread_id is not None:
            data["thread_id"] = thread_id
        # str(): orjson takes only exact strings as keys, and these may be RoomID, UserID.
        receipt = {"event_ids": [str(event_id)], "data": data}
        content = {str(room_id): {"m.read": {str(user_id): receipt}}}
        await self._queue(
            await self._servers_in_rooms((room_id,)),
            RECEIPT,
            content,
            f"receipt {room_id} {user_id} {thread_id or ''}",
        )

    async def presence(self, user_id: str, content: JsonDict) -> None:
        rooms = (await self._store.get_rooms_of((user_id,))).get(user_id, [])
        item: JsonDict = {"user_id": user_id, **content}
        item.setdefault("last_active_ago", 0)
        item.setdefault("currently_active", False)
        await self._queue(
            await self._servers_in_rooms(rooms), PRESENCE, {"push": [item]}, f"presence {user_id}"
        )

    async def device_list_changed(
        self, user_id: str, stream_id: int, device_id: str | None, *, deleted: bool
    ) -> None:
        """The keys themselves are read as the EDU is sent (the sender's ``DeviceKeys``): a
        device changed twice while a server is down is sent with its latest keys."""
        rooms = (await self._store.get_rooms_of((user_id,))).get(user_id, [])
        destinations = await self._servers_in_rooms(rooms)
        if not destinations:
            return
        if device_id is None:
            await self._queue(
                destinations, SIGNING_KEY_UPDATE, {"user_id": user_id}, f"signing {user_id}"
            )
            return
        # The device-list position is the update's stream ID; its prev_id is set as it is
        # sent (the last update about the user the destination was sent), so updates
        # replaced or dropped while it waits leave no hole in the chain it sees.
        content: JsonDict = {"user_id": user_id, "device_id": device_id, "stream_id": stream_id}
        if deleted:
            content["deleted"] = True
        dropped = await self._store.queue_device_list_update(
            destinations,
            DEVICE_LIST_UPDATE,
            user_id,
            device_id,
            jsonutil.dumps_str(content),
            jsonutil.dumps_str({**content, RESYNC: True}),
            MAX_DEVICE_UPDATES_PER_USER,
            self._clock.now_ms(),
        )
        if dropped:
            logger.info(
                "device list updates collapsed into a resync",
                extra={"user_id": user_id, "dropped": dropped},
            )
        self._wake()

    async def to_device(
        self,
        sender: str,
        event_type: str,
        message_id: str,
        messages: Mapping[str, Mapping[str, JsonDict]],
    ) -> None:
        by_server: dict[str, dict[str, Mapping[str, JsonDict]]] = {}
        for user_id, by_device in messages.items():
            by_server.setdefault(server_of(user_id), {})[str(user_id)] = by_device
        rows = [
            (
                server,
                DIRECT_TO_DEVICE,
                jsonutil.dumps_str(
                    {
                        "sender": sender,
                        "type": event_type,
                        "message_id": message_id,
                        "messages": users,
                    }
                ),
                None,
            )
            for server, users in sorted(by_server.items())
            if server != self._server_name
        ]
        await self._store.queue_edus(rows, self._clock.now_ms())
        if rows:
            self._wake()
