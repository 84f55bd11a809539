"""The admin API's background work on rooms (issue 22): deleting a room (its members out,
a replacement room, a block, the purge from every table) and redacting a user's events,
with their statuses kept in the database for any worker to read.

Every method takes the requester and refuses anyone but a server administrator first.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from homeserver.admin.users import require_admin
from homeserver.caches.invalidations import (
    SYNC_MEMBERSHIPS_OF_ROOM,
    CacheInvalidations,
)
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.create import CreateRoomRequest, RoomCreator
from homeserver.rooms.membership import MembershipService
from homeserver.rooms.sender import EventSender
from homeserver.storage.admin import AdminStore
from homeserver.storage.admin_rooms import AdminRoomStore, DeleteTask
from homeserver.storage.events import EventStore
from homeserver.storage.rooms import RoomStore

logger = logging.getLogger(__name__)

# A deletion still unfinished this long after it started was interrupted (its worker
# stopped): it is marked failed and the room may be deleted again.
STALE_DELETION_MS = 3600 * 1000
DEFAULT_NEW_ROOM_NAME = "Content Violation Notification"
DEFAULT_NEW_ROOM_MESSAGE = (
    "Sharing illegal content on this server is not permitted and rooms in violation will be "
    "blocked."
)


@dataclass(frozen=True, slots=True)
class RedactRequest:
    rooms: tuple[RoomID, ...] = ()  # none: every room the user has a membership in
    reason: str | None = None
    limit: int = 1000  # events per room, newest first
    use_admin: bool = False
    after_ts: int | None = None
    before_ts: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    new_room_user_id: UserID | None = None
    room_name: str | None = None
    message: str | None = None
    block: bool = False
    purge: bool = True
    force_purge: bool = False


class AdminRoomTasks:
    def __init__(
        self,
        store: AdminRoomStore,
        admin_store: AdminStore,
        room_store: RoomStore,
        events: EventStore,
        memberships: MembershipService,
        creator: RoomCreator,
        sender: EventSender,
        clock: Clock,
        server_name: str,
        invalidations: CacheInvalidations | None = None,
    ) -> None:
        self._invalidations = invalidations
        self._store = store
        self._admin_store = admin_store
        self._room_store = room_store
        self._events = events
        self._memberships = memberships
        self._creator = creator
        self._sender = sender
        self._clock = clock
        self._server_name = server_name
        # Tasks running on this worker, kept so that they are not garbage-collected.
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # --- deletion ------------------------------------------------------------------------------

    async def delete_room(
        self, requester: Requester, room_id: RoomID, request: DeleteRequest
    ) -> str:
        """Start deleting the room in the background; returns the deletion's ID."""
        require_admin(requester)
        known = bool(await self._store.room_counts(self._server_name, room_id))
        if not known:
            if request.block:
                # Synapse: an unknown room can be blocked ahead; nothing else to do.
                await self._admin_store.block_room(room_id, requester.user_id, self._clock.now_ms())
            else:
                raise MatrixError(Codes.NOT_FOUND, "Room not found")
        if request.new_room_user_id is not None:
            new_user = request.new_room_user_id
            if new_user.server_name != self._server_name:
                raise MatrixError(Codes.INVALID_PARAM, "new_room_user_id must be a local user")
            if await self._admin_store.get_user(new_user) is None:
                raise MatrixError(Codes.NOT_FOUND, "new_room_user_id: user not found")
        now = self._clock.now_ms()
        for task in await self._store.get_delete_tasks(room_id):
            if task.status not in ("shutting_down", "purging"):
                continue
            if task.delete_id in self._tasks or task.created_ts > now - STALE_DELETION_MS:
                raise MatrixError(
                    Codes.UNKNOWN, "A deletion of this room is already running", status=400
                )
            # Interrupted (a restart): a new deletion takes over.
            await self._store.update_delete_task(
                task.delete_id, "failed", error="Interrupted before it finished"
            )
        delete_id = secrets.token_urlsafe(12)
        await self._store.add_delete_task(delete_id, room_id, self._clock.now_ms())
        if not known:
            await self._store.update_delete_task(delete_id, "complete", result=_result())
            return delete_id
        self._tasks[delete_id] = asyncio.create_task(
            self._delete(requester, delete_id, room_id, request)
        )
        self._tasks[delete_id].add_done_callback(lambda _: self._tasks.pop(delete_id, None))
        return delete_id

    async def finish(self, requester: Requester, delete_id: str) -> JsonDict:
        """Wait for a deletion this worker started, then its status (the v1 API, which
        answers once the deletion is over)."""
        await self.wait_for(delete_id)
        return await self.delete_status(requester, delete_id)

    async def wait_for(self, task_id: str) -> None:
        """Until a deletion or redaction this worker runs is over (tests, shut-down)."""
        task = self._tasks.get(task_id)
        if task is not None:
            await asyncio.shield(task)

    async def _delete(
        self, requester: Requester, delete_id: str, room_id: RoomID, request: DeleteRequest
    ) -> None:
        try:
            result = await self._shut_down(requester, room_id, request)
            if request.purge:
                await self._store.update_delete_task(delete_id, "purging", result=result)
                joined = await self._room_store.get_room_members(room_id, ["join"])
                local = [m for m in joined if UserID(m.user_id).server_name == self._server_name]
                if local and not request.force_purge:
                    raise MatrixError(
                        Codes.UNKNOWN,
                        "Local users are still in the room (use force_purge)",
                        status=400,
                    )
                groups = await self._store.purge_room(room_id)
                self._events.forget_state_groups(groups)
                self._room_store.forget_cached_room(room_id)
                if self._invalidations is not None:
                    await self._invalidations.invalidate(SYNC_MEMBERSHIPS_OF_ROOM, (room_id,))
            await self._store.update_delete_task(delete_id, "complete", result=result)
            logger.info(
                "room deleted by an administrator",
                extra={"room_id": room_id, "admin": requester.user_id, "purge": request.purge},
            )
        except Exception as e:  # the status says what failed; the task must not die silently
            logger.exception("room deletion failed", extra={"room_id": room_id})
            message = e.message if isinstance(e, MatrixError) else "Internal error"
            await self._store.update_delete_task(delete_id, "failed", error=message)

    async def _shut_down(
        self, requester: Requester, room_id: RoomID, request: DeleteRequest
    ) -> JsonDict:
        """Block, move the local members and aliases to a new room (if asked), make every
        local member leave."""
        if request.block:
            await self._admin_store.block_room(room_id, requester.user_id, self._clock.now_ms())
        new_room_id: RoomID | None = None
        if request.new_room_user_id is not None:
            new_owner = Requester(request.new_room_user_id, "", 0)
            new_room_id = await self._creator.create_room(
                new_owner,
                CreateRoomRequest(
                    name=request.room_name or DEFAULT_NEW_ROOM_NAME,
                    preset="public_chat",
                    power_level_content_override={"users_default": -10},
                ),
            )
            await self._sender.send(
                new_room_id,
                request.new_room_user_id,
                "m.room.message",
                {"msgtype": "m.text", "body": request.message or DEFAULT_NEW_ROOM_MESSAGE},
            )
        kicked: list[str] = []
        failed: list[str] = []
        members = await self._room_store.get_room_members(room_id, ["join", "invite", "knock"])
        for m in members:
            user = UserID(m.user_id)
            if user.server_name != self._server_name:
                continue
            try:
                await self._memberships.send_own_membership(room_id, user, "leave")
                if new_room_id is not None and m.membership == "join":
                    if user != request.new_room_user_id:
                        await self._memberships.join(Requester(user, "", 0), new_room_id)
                kicked.append(user)
            except MatrixError:
                failed.append(user)
        aliases = await self._room_store.get_aliases(room_id)
        for alias in aliases:
            await self._room_store.delete_alias(alias)
            if new_room_id is not None and request.new_room_user_id is not None:
                await self._room_store.create_alias(alias, new_room_id, request.new_room_user_id)
        return _result(kicked, failed, aliases, new_room_id)

    # --- redacting a user's events --------------------------------------------------------------

    async def redact_user_events(
        self, requester: Requester, user_id: UserID, request: RedactRequest
    ) -> str:
        """Start redacting the user's events in the background; returns the task's ID.
        A local user's events are redacted by the user (puppeted) unless ``use_admin``;
        another server's, by the administrator, as the room's power levels allow."""
        require_admin(requester)
        for room_id in request.rooms:
            if not await self._store.room_counts(self._server_name, room_id):
                raise MatrixError(Codes.NOT_FOUND, f"Room not found: {room_id}")
        redact_id = secrets.token_urlsafe(12)
        await self._store.add_redaction_task(redact_id, user_id, self._clock.now_ms())
        task = asyncio.create_task(self._redact(requester, redact_id, user_id, request))
        self._tasks[redact_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(redact_id, None))
        return redact_id

    async def _redact(
        self, requester: Requester, redact_id: str, user_id: UserID, request: RedactRequest
    ) -> None:
        failed: dict[str, str] = {}
        try:
            await self._store.update_redaction_task(redact_id, "active", failed)
            rooms = list(request.rooms) or await self._store.user_room_ids(user_id)
            found = await self._store.user_events(
                user_id, rooms, request.limit, request.after_ts, request.before_ts
            )
            puppet = user_id.server_name == self._server_name and not request.use_admin
            sender = user_id if puppet else requester.user_id
            content: JsonDict = {} if request.reason is None else {"reason": request.reason}
            for room_id, event_id in found:
                try:
                    await self._sender.send(
                        room_id, sender, "m.room.redaction", dict(content), redacts=event_id
                    )
                except MatrixError as e:
                    failed[event_id] = e.message
            await self._store.update_redaction_task(redact_id, "completed", failed)
            logger.info(
                "user's events redacted by an administrator",
                extra={"user_id": user_id, "admin": requester.user_id, "count": len(found)},
            )
        except Exception:
            logger.exception("redacting a user's events failed", extra={"user_id": user_id})
            await self._store.update_redaction_task(redact_id, "failed", failed)

    async def redaction_status(self, requester: Requester, redact_id: str) -> JsonDict:
        require_admin(requester)
        found = await self._store.get_redaction_task(redact_id)
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, "Redaction not found")
        status, failed = found
        return {"status": status, "failed_redactions": failed}

    def _status(self, task: DeleteTask) -> JsonDict:
        return {
            "delete_id": task.delete_id,
            "status": task.status,
            "error": task.error or "",
            "shutdown_room": task.result or _result(),
        }

    async def delete_status(self, requester: Requester, delete_id: str) -> JsonDict:
        require_admin(requester)
        task = await self._store.get_delete_task(delete_id)
        if task is None:
            raise MatrixError(Codes.NOT_FOUND, "Delete ID not found")
        status = self._status(task)
        status.pop("delete_id")
        return status

    async def delete_statuses(self, requester: Requester, room_id: RoomID) -> list[JsonDict]:
        require_admin(requester)
        tasks = await self._store.get_delete_tasks(room_id)
        if not tasks:
            raise MatrixError(Codes.NOT_FOUND, "No deletion found for this room")
        return [self._status(t) for t in tasks]


def _result(
    kicked: list[str] | None = None,
    failed: list[str] | None = None,
    aliases: list[str] | None = None,
    new_room_id: str | None = None,
) -> JsonDict:
    return {
        "kicked_users": kicked or [],
        "failed_to_kick_users": failed or [],
        "local_aliases": aliases or [],
        "new_room_id": new_room_id,
    }
