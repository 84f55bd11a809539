"""Our users joining rooms that live on other servers, and declining their invites (server-
server API, "Joining rooms", "Leaving rooms"), and inviting other servers' users.

A join asks a resident server for a template (make_join), trying each candidate server in
turn, signs the join in the room's version and sends it (send_join v2). The answer's state
and auth chain are checked (format, signatures through the keyring, content hashes, each
event against its own auth events) before anything is stored: the auth chain and the state
as outliers, then the join on top of that state, which becomes the room's current state.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.crypto.signing import SigningKey
from homeserver.events.auth import check_auth, check_auth_events_selection
from homeserver.events.format import (
    auth_event_ids,
    compute_reference_hash,
    event_id_of,
    hash_and_sign_event,
    redact,
)
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from homeserver.events.validation import (
    auth_chain_rejections,
    check_pdu_format,
    content_hash_matches,
)
from homeserver.federation.client import FederationClient, FederationError
from homeserver.federation.event_checks import check_pdu_signatures, signed_by
from homeserver.federation.keyring import Keyring
from homeserver.storage.events import EventStore, IncomingEvent, StateMap
from homeserver.storage.events.remote_rooms import RemoteRoomWrites
from homeserver.storage.rooms import RoomStore
from homeserver.wakeups.notifier import Notifier

logger = logging.getLogger(__name__)

FED = "/_matrix/federation"
MEMBER = "m.room.member"
CREATE = "m.room.create"
# Room versions we join on other servers: every one we know (versions 1 and 2 with the
# event ID ours to choose, as the joining server).
JOINABLE_VERSIONS = list(KNOWN_ROOM_VERSIONS)
KNOCKABLE_VERSIONS = [v for v in JOINABLE_VERSIONS if KNOWN_ROOM_VERSIONS[v].knock_join_rule]
# Stripped state events kept from a knock's answer.
MAX_STRIPPED_STATE = 50
# How many candidate servers one join tries.
MAX_JOIN_SERVERS = 10


def _q(value: str) -> str:
    return quote(value, safe="")


class RemoteRooms:
    def __init__(
        self,
        client: FederationClient,
        keyring: Keyring,
        events: EventStore,
        rooms: RoomStore,
        notifier: Notifier,
        clock: Clock,
        server_name: str,
        signing_key: SigningKey,
        remote_rooms: RemoteRoomWrites,
    ) -> None:
        self._remote_rooms = remote_rooms
        self._client = client
        self._keyring = keyring
        self._events = events
        self._rooms = rooms
        self._notifier = notifier
        self._clock = clock
        self._server_name = server_name
        self._signing_key = signing_key

    # --- joining ---------------------------------------------------------------------------

    async def join(
        self, room_id: str, user_id: str, servers: Sequence[str], content: JsonDict
    ) -> str:
        """Join ``user_id`` to a room of other servers through the first of ``servers`` that
        answers; the join's event ID. 404 M_NOT_FOUND when none can be asked, 403 when they
        refuse, 502 when none answers."""
        candidates = [s for s in dict.fromkeys(servers) if s != self._server_name]
        if not candidates:
            raise MatrixError(Codes.NOT_FOUND, "No server to join this room through")
        failure: MatrixError | None = None
        for server in candidates[:MAX_JOIN_SERVERS]:
            try:
                return await self._join_via(server, room_id, user_id, content)
            except FederationError as e:
                logger.info(
                    "remote join failed",
                    extra={"room_id": room_id, "server": server, "error": str(e)},
                )
                failure = _as_matrix_error(e)
        assert failure is not None
        raise failure

    async def _join_via(self, server: str, room_id: str, user_id: str, content: JsonDict) -> str:
        made = await self._client.get_json(
            server,
            f"{FED}/v1/make_join/{_q(room_id)}/{_q(user_id)}",
            query={"ver": JOINABLE_VERSIONS},
        )
        version, template = _check_template(made, room_id, user_id, "join")
        event = self._sign_template(template, version, content)
        event_id = event_id_of(event, version)
        answer = await self._put_v2_or_v1(server, f"send_join/{_q(room_id)}/{_q(event_id)}", event)
        if not isinstance(answer, dict):
            raise FederationError(server, "send_join answer is not an object")
        signed = answer.get("event")
        if isinstance(signed, dict) and _same_event(signed, event, version):
            # A restricted join comes back with the authorising server's signature.
            event = signed
        state = answer.get("state")
        chain = answer.get("auth_chain")
        if not isinstance(state, list) or not isinstance(chain, list):
            raise FederationError(server, "send_join answer has no state or auth chain")
        await self._persist_join(room_id, version, event, event_id, state, chain)
        return event_id

    def _sign_template(
        self, template: JsonDict, version: RoomVersion, content: JsonDict
    ) -> JsonDict:
        event: JsonDict = {
            k: v
            for k, v in template.items()
            if k not in ("event_id", "hashes", "signatures", "unsigned")
        }
        event["content"] = {**template.get("content", {}), **content}
        event["origin"] = self._server_name
        event["origin_server_ts"] = self._clock.now_ms()
        if version.event_format is EventFormat.V1:
            # Room versions 1 and 2: the event names itself, on the server that signs it
            # (the resident server's template names none, or one of its own).
            event["event_id"] = f"${secrets.token_urlsafe(18)}:{self._server_name}"
        hash_and_sign_event(event, self._server_name, self._signing_key, version)
        return event

    async def _persist_join(
        self,
        room_id: str,
        version: RoomVersion,
        event: JsonDict,
        event_id: str,
        state: list[Any],
        chain: list[Any],
    ) -> None:
        checked = await self._checked_events([*chain, *state], version, room_id)
        # The create event first: in room version 12 no event lists it among its auth
        # events, and auth_chain_rejections orders events by those lists alone.
        checked = dict(sorted(checked.items(), key=lambda item: item[1].get("type") != CREATE))
        rejected = auth_chain_rejections(checked, version)
        state_ids: StateMap = {}
        for pdu in state:
            if not isinstance(pdu, dict):
                continue
            try:
                eid = event_id_of(pdu, version)
            except (ValueError, TypeError):
                continue
            if eid in checked and eid not in rejected:
                good = checked[eid]
                if isinstance(good.get("state_key"), str):
                    state_ids[(good["type"], good["state_key"])] = eid
        create_id = state_ids.get((CREATE, ""))
        if create_id is None:
            raise MatrixError(
                Codes.UNKNOWN, "The resident server's answer has no valid m.room.create", status=502
            )
        create = checked[create_id]
        if create.get("content", {}).get("room_version", "1") != version.identifier:
            raise MatrixError(Codes.UNKNOWN, "The room's version does not match", status=502)
        # Our join, against the state it is sent in: every auth event the template named
        # must have passed the checks.
        unusable = [a for a in auth_event_ids(event, version) if a not in checked or a in rejected]
        if unusable:
            raise MatrixError(
                Codes.UNKNOWN,
                "The resident server's answer does not hold the join's auth events",
                status=502,
            )
        try:
            auth_events = [checked[a] for a in auth_event_ids(event, version)]
            keyed = check_auth_events_selection(version, event, auth_events)
            check_auth(version, event, keyed, create_event=create)
        except MatrixError as e:
            raise MatrixError(Codes.FORBIDDEN, f"The join is not allowed: {e.message}") from e
        await self._rooms.create_room(
            room_id, version.identifier, str(create.get("sender")), self._clock.now_ms(), False
        )
        outliers = [
            IncomingEvent(pdu, eid, outlier=True, rejected=rejected.get(eid))
            for eid, pdu in checked.items()
        ]
        now = self._clock.now_ms()
        if outliers:
            await self._events.persist_incoming(room_id, outliers, now)
        positions = await self._events.persist_incoming(
            room_id, [IncomingEvent(event, event_id, state_before=state_ids)], now
        )
        position = positions.get(event_id)
        if position is not None:
            await self._notifier.notify(
                Stream.EVENTS, position, room_id=room_id, user_ids=(event["state_key"],)
            )

    async def _checked_events(
        self, pdus: Sequence[Any], version: RoomVersion, room_id: str
    ) -> dict[str, JsonDict]:
        """The PDUs that pass steps 1 to 3 (a content hash mismatch leaves the redacted
        form), by event ID; the others are left out."""
        found: dict[str, JsonDict] = {}
        for pdu in pdus:
            if not isinstance(pdu, dict):
                continue
            try:
                event_id = event_id_of(pdu, version)
                if event_id in found:
                    continue
                check_pdu_format(pdu, version)
                if pdu.get("room_id", room_id) != room_id:
                    continue
                await check_pdu_signatures(self._keyring, pdu, version)
            except (MatrixError, ValueError, TypeError) as e:
                logger.info("state event dropped", extra={"room_id": room_id, "reason": str(e)})
                continue
            found[event_id] = pdu if content_hash_matches(pdu) else redact(pdu, version)
        if version.event_format is EventFormat.V1:
            # Versions 1 and 2: the sending server names its events, so an ID we already
            # hold for another event (of another room, say) is not this one: left out. The
            # reference hash is the same for an event and its redacted form.
            known = await self._events.get_events(found)
            for event_id, event in known.items():
                if event.room_id != room_id or compute_reference_hash(
                    event.pdu, version
                ) != compute_reference_hash(found[event_id], version):
                    logger.info(
                        "state event with a taken ID dropped",
                        extra={"room_id": room_id, "event_id": event_id},
                    )
                    del found[event_id]
        return found

    async def _put_v2_or_v1(self, server: str, path: str, event: JsonDict) -> Any:
        """PUT ``/v2/{path}`` (send_join, send_leave), or its deprecated ``/v1/{path}`` when
        the server does not know v2 (as Synapse falls back); the answer's body."""
        try:
            # PDUs out of the canonical integer range are each checked by the room's
            # version (_checked_events): rooms of versions 1 to 5 may hold them.
            return await self._client.request(
                server, "PUT", f"{FED}/v2/{path}", content=event, int_range=False
            )
        except FederationError as e:
            if not _is_unknown_endpoint(e):
                raise
        logger.info("falling back to a v1 endpoint", extra={"server": server, "path": path})
        answer = await self._client.request(
            server, "PUT", f"{FED}/v1/{path}", content=event, int_range=False
        )
        return _v1_answer(server, answer)

    # --- knocking ----------------------------------------------------------------------------

    async def knock(
        self, room_id: str, user_id: str, servers: Sequence[str], content: JsonDict
    ) -> str:
        """Knock on a room of other servers (make_knock, send_knock); the knock is recorded
        as the user's membership with the room's stripped state the server answered."""
        candidates = [s for s in dict.fromkeys(servers) if s != self._server_name]
        failure: MatrixError = MatrixError(Codes.NOT_FOUND, "No server to knock through")
        for server in candidates[:MAX_JOIN_SERVERS]:
            try:
                made = await self._client.get_json(
                    server,
                    f"{FED}/v1/make_knock/{_q(room_id)}/{_q(user_id)}",
                    query={"ver": KNOCKABLE_VERSIONS},
                )
                version, template = _check_template(made, room_id, user_id, "knock")
                event = self._sign_template(template, version, content)
                event_id = event_id_of(event, version)
                answer = await self._client.request(
                    server,
                    "PUT",
                    f"{FED}/v1/send_knock/{_q(room_id)}/{_q(event_id)}",
                    content=event,
                )
            except FederationError as e:
                failure = _as_matrix_error(e)
                continue
            state = answer.get("knock_room_state") if isinstance(answer, dict) else None
            stripped = [e for e in state if isinstance(e, dict)] if isinstance(state, list) else []
            position = await self._remote_rooms.store_remote_membership(
                room_id,
                version.identifier,
                event_id,
                event,
                {"knock_room_state": stripped[:MAX_STRIPPED_STATE]},
                self._clock.now_ms(),
            )
            if position is not None:
                await self._notifier.notify(
                    Stream.EVENTS, position, room_id=room_id, user_ids=(user_id,)
                )
            return event_id
        raise failure

    # --- declining an invite -----------------------------------------------------------------

    async def reject_invite(self, room_id: str, user_id: str, servers: Sequence[str]) -> str:
        """Decline an invite into (or withdraw a knock on) a room of another server
        (make_leave and send_leave through a server in it); the leave's event ID. Recorded
        here as the user's membership once the remote server took it."""
        failure: MatrixError | None = None
        for server in [s for s in dict.fromkeys(servers) if s != self._server_name]:
            try:
                made = await self._client.get_json(
                    server, f"{FED}/v1/make_leave/{_q(room_id)}/{_q(user_id)}"
                )
                version, template = _check_template(made, room_id, user_id, "leave")
                event = self._sign_template(template, version, {})
                event_id = event_id_of(event, version)
                await self._put_v2_or_v1(server, f"send_leave/{_q(room_id)}/{_q(event_id)}", event)
            except FederationError as e:
                failure = _as_matrix_error(e)
                continue
            return await self._record_leave(room_id, user_id, version, event)
        # No server in the room took the leave (gone, refusing, not answering): the user is
        # still rid of the invite, by a leave made here that only this server knows of (as
        # Synapse's "out-of-band" rejection; the inviter never learns of it).
        local = await self._reject_locally(room_id, user_id)
        if local is not None:
            logger.info("invite declined locally", extra={"room_id": room_id, "error": failure})
            return local
        raise failure or MatrixError(Codes.NOT_FOUND, "No server to leave this room through")

    async def _reject_locally(self, room_id: str, user_id: str) -> str | None:
        """A leave after the user's invite (or knock), its only prev and auth event, signed
        by this server and recorded as the user's membership; None without such an event."""
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership not in ("invite", "knock"):
            return None
        invite = await self._events.get_event(membership.event_id)
        room = await self._rooms.get_room(room_id)
        version = KNOWN_ROOM_VERSIONS.get(room.room_version) if room is not None else None
        if invite is None or version is None:
            return None
        reference: Any = invite.event_id
        if version.event_format is EventFormat.V1:
            reference = [invite.event_id, invite.pdu.get("hashes", {})]
        template: JsonDict = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": {"membership": "leave"},
            "prev_events": [reference],
            "auth_events": [reference],
            "depth": invite.depth + 1,
        }
        return await self._record_leave(
            room_id, user_id, version, self._sign_template(template, version, {})
        )

    async def _record_leave(
        self, room_id: str, user_id: str, version: RoomVersion, event: JsonDict
    ) -> str:
        """The user's leave of a room this server is not in, as their membership."""
        event_id = event_id_of(event, version)
        position = await self._remote_rooms.store_remote_membership(
            room_id, version.identifier, event_id, event, {}, self._clock.now_ms()
        )
        if position is not None:
            await self._notifier.notify(
                Stream.EVENTS, position, room_id=room_id, user_ids=(user_id,)
            )
        return event_id

    # --- inviting other servers' users --------------------------------------------------------

    async def invite(
        self, room_id: str, version: str, event: JsonDict, event_id: str, stripped: list[JsonDict]
    ) -> JsonDict:
        """PUT /v2/invite on the invitee's server: the invite with its signature added."""
        invitee = str(event["state_key"])
        server = invitee.split(":", 1)[1]
        room_version = KNOWN_ROOM_VERSIONS[version]
        path = f"invite/{_q(room_id)}/{_q(event_id)}"
        try:
            try:
                answer = await self._client.request(
                    server,
                    "PUT",
                    f"{FED}/v2/{path}",
                    content={
                        "room_version": version,
                        "event": event,
                        "invite_room_state": stripped,
                    },
                )
            except FederationError as e:
                if not _is_unknown_endpoint(e):
                    raise
                if room_version.event_format is not EventFormat.V1:
                    # The v1 invite carries no room version: only rooms of versions 1 and
                    # 2 may be sent through it.
                    raise MatrixError(
                        Codes.UNSUPPORTED_ROOM_VERSION,
                        "The invitee's server does not support this room version",
                    ) from e
                v1_event = {**event, "unsigned": {"invite_room_state": stripped}}
                answer = _v1_answer(
                    server,
                    await self._client.request(server, "PUT", f"{FED}/v1/{path}", content=v1_event),
                )
        except FederationError as e:
            raise _as_matrix_error(e) from e
        signed = answer.get("event") if isinstance(answer, dict) else None
        if isinstance(signed, dict) and room_version.strict_canonical_json:
            # Floats or integers out of range: not an event of this room version (400
            # M_BAD_JSON, as for any such event we are given).
            check_json_numbers(signed)
        if not isinstance(signed, dict) or not _same_event(signed, event, room_version):
            raise MatrixError(
                Codes.UNKNOWN, "The invitee's server answered another event", status=502
            )
        if not await signed_by(self._keyring, signed, server, room_version):
            raise MatrixError(
                Codes.UNKNOWN, "The invitee's server did not sign the invite", status=502
            )
        return signed


def _same_event(pdu: JsonDict, ours: JsonDict, version: RoomVersion) -> bool:
    """Whether ``pdu`` is ``ours`` with more signatures. From room version 3 the event ID is
    a hash of everything that matters; in versions 1 and 2 it is only a name, so the rest
    is compared."""
    try:
        if event_id_of(pdu, version) != event_id_of(ours, version):
            return False
    except (ValueError, TypeError):
        return False
    if version.event_format is not EventFormat.V1:
        return True
    return _signed_part(pdu) == _signed_part(ours)


def _signed_part(pdu: JsonDict) -> JsonDict:
    return {k: v for k, v in pdu.items() if k not in ("signatures", "unsigned")}


def _is_unknown_endpoint(e: FederationError) -> bool:
    """A server that predates an endpoint's v2: 400 or 404 ``M_UNRECOGNIZED``, or a 404
    that is not a Matrix error at all (a plain "not found" page). A 404 ``M_NOT_FOUND``
    means the room or event, not the endpoint: no fallback then."""
    if e.errcode == Codes.UNRECOGNIZED:
        return e.status in (400, 404)
    return e.status == 404 and e.errcode is None


def _v1_answer(server: str, answer: Any) -> Any:
    """The body of a deprecated v1 answer, ``[200, {...}]``."""
    if isinstance(answer, list) and len(answer) == 2 and isinstance(answer[1], dict):
        return answer[1]
    raise FederationError(server, "the v1 answer is not [200, {...}]")


def _check_template(
    made: Any, room_id: str, user_id: str, membership: str
) -> tuple[RoomVersion, JsonDict]:
    """spec, make_join: the template must be the membership of that user in that room; a
    malformed one is discarded (another server may be tried)."""
    if not isinstance(made, dict) or not isinstance(made.get("event"), dict):
        raise FederationError("", f"make_{membership} answer has no event")
    version = KNOWN_ROOM_VERSIONS.get(str(made.get("room_version", "1")))
    if version is None:
        raise FederationError("", "the room's version is not one we join")
    template: JsonDict = made["event"]
    content = template.get("content")
    if (
        template.get("room_id") != room_id
        or template.get("sender") != user_id
        or template.get("state_key") != user_id
        or template.get("type") != MEMBER
        or not isinstance(content, dict)
        or content.get("membership") != membership
    ):
        raise FederationError("", f"make_{membership} answered a malformed template")
    return version, template


def _as_matrix_error(e: FederationError) -> MatrixError:
    """A remote refusal as ours to the client: its meaning, never its words."""
    if e.status == 403:
        return MatrixError(Codes.FORBIDDEN, "The room's server refused")
    if e.status == 404:
        return MatrixError(Codes.NOT_FOUND, "The room's server does not know this room")
    if e.status == 400 and e.errcode == Codes.INCOMPATIBLE_ROOM_VERSION:
        return MatrixError(
            Codes.UNSUPPORTED_ROOM_VERSION, "The room's version is not one this server supports"
        )
    return MatrixError(Codes.UNKNOWN, "The room's server could not be reached", status=502)
