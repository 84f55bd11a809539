"""The admin API on the server as a whole (issue 22): reports of content, registration
tokens, server notices, the server's version.

Every method takes the requester and refuses anyone but a server administrator first.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import re
import secrets
import string

import orjson

from homeserver.accounts.account_data import AccountDataService
from homeserver.accounts.service import AccountService
from homeserver.admin.users import require_admin
from homeserver.core.clock import Clock
from homeserver.core.config import ServerNoticesConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.create import CreateRoomRequest, RoomCreator
from homeserver.rooms.membership import MembershipService
from homeserver.rooms.sender import EventSender, Txn
from homeserver.storage.admin_server import AdminServerStore, Report, ReportQuery
from homeserver.storage.events import DuplicateTxn, EventStore
from homeserver.storage.registration_tokens import RegistrationToken, RegistrationTokenStore
from homeserver.storage.rooms import RoomStore

logger = logging.getLogger(__name__)

# spec, m.login.registration_token: 1 to 64 of these characters.
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{1,64}\Z")
TOKEN_ALPHABET = string.ascii_letters + string.digits + "._~-"
DEFAULT_TOKEN_LENGTH = 16
SERVER_NOTICE_TAG = "m.server_notice"


def token_json(token: RegistrationToken) -> JsonDict:
    return {
        "token": token.token,
        "uses_allowed": token.uses_allowed,
        "pending": token.pending,
        "completed": token.completed,
        "expiry_time": token.expiry_time,
    }


class AdminServer:
    def __init__(
        self,
        store: AdminServerStore,
        tokens: RegistrationTokenStore,
        room_store: RoomStore,
        events: EventStore,
        accounts: AccountService,
        account_data: AccountDataService,
        memberships: MembershipService,
        creator: RoomCreator,
        sender: EventSender,
        clock: Clock,
        server_name: str,
        notices: ServerNoticesConfig,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._room_store = room_store
        self._events = events
        self._accounts = accounts
        self._account_data = account_data
        self._memberships = memberships
        self._creator = creator
        self._sender = sender
        self._clock = clock
        self._server_name = server_name
        self._notices = notices
        # One notices room per user, even for two notices sent at once (on this worker).
        self._notice_lock = asyncio.Lock()

    def server_version(self) -> JsonDict:
        return {"server_version": importlib.metadata.version("homeserver")}

    # --- reports -----------------------------------------------------------------------------

    async def _report_json(self, report: Report) -> JsonDict:
        out: JsonDict = {
            "id": report.report_id,
            "received_ts": report.created_ts,
            "room_id": report.room_id,
            "event_id": report.event_id,
            "user_id": report.reporter,
            "reason": report.reason,
            "score": None,
            "sender": report.event_sender,
        }
        if report.user_id is not None:
            out["target_user_id"] = report.user_id
        if report.room_id is not None:
            state = await self._room_store.get_current_state_contents(
                [report.room_id], ["m.room.name", "m.room.canonical_alias"]
            )
            found = state.get(report.room_id, {})
            out["name"] = _state_field(found.get("m.room.name"), "name")
            out["canonical_alias"] = _state_field(found.get("m.room.canonical_alias"), "alias")
        return out

    async def list_reports(
        self, requester: Requester, query: ReportQuery
    ) -> tuple[list[JsonDict], int, int | None]:
        require_admin(requester)
        found, total = await self._store.list_reports(query)
        next_offset = query.offset + len(found)
        return (
            [await self._report_json(r) for r in found],
            total,
            next_offset if next_offset < total else None,
        )

    async def get_report(self, requester: Requester, report_id: int, kind: str) -> JsonDict:
        require_admin(requester)
        report = await self._store.get_report(report_id, kind)
        if report is None:
            raise MatrixError(Codes.NOT_FOUND, "Report not found")
        out = await self._report_json(report)
        if report.event_id is not None:
            event = await self._events.get_event(report.event_id)
            out["event_json"] = event.pdu if event is not None else None
        return out

    async def delete_report(self, requester: Requester, report_id: int, kind: str) -> None:
        """The report is dealt with: it goes (as Synapse)."""
        require_admin(requester)
        if not await self._store.delete_report(report_id, kind):
            raise MatrixError(Codes.NOT_FOUND, "Report not found")

    # --- registration tokens -----------------------------------------------------------------

    async def list_tokens(self, requester: Requester, valid: bool | None) -> list[JsonDict]:
        require_admin(requester)
        return [token_json(t) for t in await self._store.list_tokens(valid, self._clock.now_ms())]

    async def get_token(self, requester: Requester, token: str) -> JsonDict:
        require_admin(requester)
        found = await self._tokens.get_token(token)
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, "No such registration token")
        return token_json(found)

    def _check_expiry(self, expiry_time: int | None) -> None:
        if expiry_time is not None and expiry_time < self._clock.now_ms():
            raise MatrixError(Codes.INVALID_PARAM, "expiry_time must not be in the past")

    async def create_token(
        self,
        requester: Requester,
        token: str | None,
        length: int | None,
        uses_allowed: int | None,
        expiry_time: int | None,
    ) -> JsonDict:
        require_admin(requester)
        self._check_expiry(expiry_time)
        if token is not None:
            if length is not None:
                raise MatrixError(Codes.INVALID_PARAM, "Give either token or length, not both")
            if not TOKEN_PATTERN.match(token):
                raise MatrixError(
                    Codes.INVALID_PARAM,
                    "token must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'",
                )
            if not await self._tokens.create_token(token, uses_allowed, expiry_time):
                raise MatrixError(Codes.INVALID_PARAM, f"Token already exists: {token}")
        else:
            size = DEFAULT_TOKEN_LENGTH if length is None else length
            while True:  # a collision of random tokens is all but impossible; retry anyway
                token = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(size))
                if await self._tokens.create_token(token, uses_allowed, expiry_time):
                    break
        logger.info("registration token created", extra={"admin": requester.user_id})
        return await self.get_token(requester, token)

    async def update_token(
        self, requester: Requester, token: str, changes: dict[str, int | None]
    ) -> JsonDict:
        require_admin(requester)
        self._check_expiry(changes.get("expiry_time"))
        if not await self._store.update_token(token, changes):
            raise MatrixError(Codes.NOT_FOUND, "No such registration token")
        return await self.get_token(requester, token)

    async def delete_token(self, requester: Requester, token: str) -> None:
        require_admin(requester)
        if not await self._tokens.delete_token(token):
            raise MatrixError(Codes.NOT_FOUND, "No such registration token")

    # --- server notices ----------------------------------------------------------------------

    async def send_server_notice(
        self,
        requester: Requester,
        user_id: UserID,
        event_type: str,
        state_key: str | None,
        content: JsonDict,
        txn_id: str | None = None,
    ) -> str:
        """Send into the user's notices room (made on first use: the system user creates
        it, invites the user and tags it ``m.server_notice`` for them)."""
        require_admin(requester)
        if not self._notices.enabled:
            raise MatrixError(
                Codes.UNKNOWN, "Server notices are not enabled on this server", status=400
            )
        if user_id.server_name != self._server_name:
            raise MatrixError(Codes.INVALID_PARAM, "Server notices go to local users only")
        if not await self._accounts.user_exists(user_id):
            raise MatrixError(Codes.NOT_FOUND, "User not found")
        system = await self._system_user()
        check_json_numbers(content, "content")
        txn = None
        if txn_id is not None:
            # PUT with a transaction ID: a retry gets the first send's event (per admin).
            txn = Txn(f"admin:{requester.user_id}", txn_id, f"notice:{user_id}")
            known = await self._events.get_txn_event_id(system, txn.device_id, txn.scope, txn_id)
            if known is not None:
                return known
        room_id = await self._notice_room(system, user_id)
        try:
            sent = await self._sender.send(
                room_id, system, event_type, content, state_key=state_key, txn=txn
            )
        except DuplicateTxn:
            assert txn is not None
            known = await self._events.get_txn_event_id(
                system, txn.device_id, txn.scope, txn.txn_id
            )
            if known is None:
                raise
            return known
        return sent.event_id

    async def _system_user(self) -> UserID:
        system = UserID.of(self._notices.system_user_localpart, self._server_name)
        if not await self._accounts.user_exists(system):
            await self._accounts.create_user_as_admin(
                system, None, admin=False, displayname=self._notices.system_user_display_name
            )
        return system

    async def _notice_room(self, system: UserID, user_id: UserID) -> RoomID:
        async with self._notice_lock:
            known = await self._store.get_notice_room(user_id)
            if known is not None:
                membership = await self._room_store.get_membership(known, user_id)
                if membership is not None and membership.membership in ("join", "invite"):
                    return RoomID(known)
                # The user left: a new room, and an invite to it, reaches them again.
            room_id = await self._creator.create_room(
                Requester(system, "", 0),
                CreateRoomRequest(
                    name=self._notices.room_name,
                    preset="private_chat",
                    # Only the system user speaks; the user may read and leave.
                    power_level_content_override={"events_default": 100},
                ),
            )
            await self._memberships.invite(Requester(system, "", 0), room_id, user_id)
            await self._account_data.set_room_tag(
                Requester(user_id, "", 0), user_id, room_id, SERVER_NOTICE_TAG, {}
            )
            await self._store.set_notice_room(user_id, room_id)
            return room_id


def _state_field(raw: str | None, key: str) -> str | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw).get("content", {}).get(key)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None
