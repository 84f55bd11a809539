"""Inbound transactions (spec, server-server API: PUT /_matrix/federation/v1/send/{txnId}).

A transaction carries at most 50 PDUs and 100 EDUs. Its PDUs are grouped by room; each
room's go through the receipt checks (``IncomingEvents``) in the order sent, the rooms side
by side. One bad PDU is an error in the answer for that PDU only; a PDU of a room we do not
know is one too. What a PDU refers to and we lack is asked of the origin (``FederatedGraph``):
the events between our forward extremities and it (up to 10, ``/get_missing_events``), then,
for a longer gap, the state before its far end (``/state_ids`` and ``/event``, stored as
outliers), as the spec's "Retrieving events" describes. Then the EDUs, in order; a bad one
is ignored.

Transactions of one origin are processed one at a time (as Synapse does: a server sends the
next only after the answer, and a retry must not race the first attempt); a few more may
wait their turn, and past those an origin is answered 429 ``M_LIMIT_EXCEEDED`` (a flood
holds neither memory nor workers). The answer is kept per origin and transaction ID, so a
retry is answered again without processing again.

The signing keys the PDUs need are fetched first, all servers' side by side, before any
room takes a place: a server whose key query is slow or answers garbage costs the
transaction one request timeout, not one per PDU nor a place other rooms wait for.

A room's PDUs hold one of a few places (``MAX_ROOMS_AT_ONCE``) while they are checked and
stored, but not while the pipeline waits on the origin for what they refer to: a slow or
silent origin holds its own rooms (up to the time budget, ``DEFAULT_BUDGET_S``), never the
other servers' rooms.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Protocol

import orjson

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.json_limits import check_json_limits
from homeserver.core.types import JsonDict
from homeserver.events.format import event_id_of
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.events.validation import required_signers
from homeserver.federation.edus import InboundEdus, ServerAcls
from homeserver.federation.remote_graph import DEFAULT_BUDGET_S, FederatedGraph, Requests
from homeserver.rooms.incoming import Outcome, Received, RemoteGraph, ServerKeys
from homeserver.storage.federation_queue import FederationQueueStore
from homeserver.storage.rooms import RoomStore

logger = logging.getLogger(__name__)

# spec, PUT /send/{txnId}: "at most 50 PDUs and 100 EDUs".
MAX_PDUS = 50
MAX_EDUS = 100
# A PDU is at most 65 536 bytes (spec, "Size limits"), so 50 make at most 3.2 MiB; EDUs have
# no limit of the spec's, and one larger than a PDU's limit is dropped (MAX_EDU_BYTES).
# Together 50 + 100 items of 64 KiB, with the envelope: 10 MiB holds any valid transaction.
MAX_TRANSACTION_BYTES = 10 * 1024 * 1024
MAX_EDU_BYTES = 65_536
MAX_TXN_ID_BYTES = 255
# Rooms processed side by side at most (all transactions together): each holds a pooled
# database connection at a time, and the pool serves the clients too.
MAX_ROOMS_AT_ONCE = 4
# Key queries in flight at once for one transaction's PDUs (distinct servers).
KEY_FETCHES_AT_ONCE = 8
# Transactions of one origin waiting behind the one being processed; one more is 429. A
# server sends one at a time (spec, "Transactions"), so only a retry racing its first attempt
# or a misbehaving server ever waits; each waiting one holds its body (up to 10 MiB).
MAX_WAITING_PER_ORIGIN = 2
RETRY_AFTER_MS = 1000
# Answers are kept this long: a server retries a transaction within minutes, never days.
KEEP_ANSWERS_MS = 24 * 3600 * 1000
PRUNE_INTERVAL_S = 3600.0

# The checks that leave an event accepted, as the sending server sees it: soft-failed
# events are stored (spec, "Soft failure": the sender is not told).
_OK = (Outcome.ACCEPTED, Outcome.KNOWN, Outcome.SOFT_FAILED)


class EventPipeline(Protocol):
    """The receipt checks of other servers' events (``rooms/incoming.py``)."""

    async def receive(
        self,
        room_id: str,
        pdus: Sequence[JsonDict],
        received_ts: int,
        remote: RemoteGraph | None = None,
    ) -> list[Received]: ...


def _answer(received: Received) -> JsonDict:
    if received.outcome in _OK:
        return {}
    if received.outcome is Outcome.MISSING:
        return {"error": "Unknown prev_events or auth_events"}
    return {"error": received.reason or str(received.outcome)}


class TransactionService:
    def __init__(
        self,
        store: FederationQueueStore,
        pipeline: EventPipeline,
        edus: InboundEdus,
        rooms: RoomStore,
        clock: Clock,
        acls: ServerAcls,
        requests: Requests,
        graph_budget_s: float = DEFAULT_BUDGET_S,
        keys: ServerKeys | None = None,
    ) -> None:
        """``keys``: the key ring, to fetch the keys a transaction's PDUs need before they
        are processed (without it, the pipeline fetches them one PDU at a time)."""
        self._store = store
        self._keys = keys
        self._graph_budget_s = graph_budget_s
        self._requests = requests
        self._pipeline = pipeline
        self._acls = acls
        self._edus = edus
        self._rooms = rooms
        self._clock = clock
        self._origins: dict[str, asyncio.Lock] = {}
        # Transactions of each origin here now (the one processed and those waiting).
        self._inside: dict[str, int] = {}
        self._rooms_at_once = asyncio.Semaphore(MAX_ROOMS_AT_ONCE)

    async def on_send(self, origin: str, txn_id: str, body: Any) -> JsonDict:
        """PUT /send/{txnId} from ``origin`` (authenticated): ``{"pdus": {event_id: {} or
        {"error": ...}}}``."""
        if not txn_id or len(txn_id.encode()) > MAX_TXN_ID_BYTES:
            raise MatrixError(Codes.INVALID_PARAM, "Bad transaction ID")
        if not isinstance(body, dict):
            raise MatrixError(Codes.BAD_JSON, "The body must be a JSON object")
        pdus = body.get("pdus")
        edus = body.get("edus", [])
        if not isinstance(pdus, list):
            raise MatrixError(Codes.BAD_JSON, "pdus must be a list")
        if not isinstance(edus, list):
            raise MatrixError(Codes.BAD_JSON, "edus must be a list")
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise MatrixError(
                Codes.TOO_LARGE,
                f"At most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction",
                status=400,
            )
        inside = self._inside.get(origin, 0)
        if inside > MAX_WAITING_PER_ORIGIN:
            logger.info("transaction refused: origin busy", extra={"origin": origin})
            raise MatrixError(
                Codes.LIMIT_EXCEEDED,
                "Too many transactions from this server at once",
                retry_after_ms=RETRY_AFTER_MS,
            )
        self._inside[origin] = inside + 1
        lock = self._origins.setdefault(origin, asyncio.Lock())
        try:
            async with lock:
                return await self._process(origin, txn_id, pdus, edus)
        finally:
            self._inside[origin] -= 1
            if not self._inside[origin]:
                del self._inside[origin]
                del self._origins[origin]

    async def _process(
        self, origin: str, txn_id: str, pdus: list[Any], edus: list[Any]
    ) -> JsonDict:
        done = await self._store.get_inbound_txn(origin, txn_id)
        if done is not None:
            answer: JsonDict = orjson.loads(done)
            return answer
        answer = {"pdus": await self._receive_pdus(origin, pdus)}
        for edu in edus:
            await self._receive_edu(origin, edu)
        await self._store.put_inbound_txn(
            origin, txn_id, orjson.dumps(answer).decode(), self._clock.now_ms()
        )
        return answer

    async def _receive_pdus(self, origin: str, pdus: list[Any]) -> dict[str, JsonDict]:
        answers: dict[str, JsonDict] = {}
        by_room: dict[str, list[JsonDict]] = {}
        for pdu in pdus:
            room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
            if not isinstance(room_id, str):
                logger.info("pdu without a room ignored", extra={"origin": origin})
                continue
            by_room.setdefault(room_id, []).append(pdu)
        versions: dict[str, RoomVersion] = {}
        for room_id in by_room:
            version_id = await self._rooms.get_room_version(room_id)
            version = KNOWN_ROOM_VERSIONS.get(version_id) if version_id is not None else None
            if version is not None:
                versions[room_id] = version
        await self._fetch_keys(by_room, versions)
        now = self._clock.now_ms()
        results = await asyncio.gather(
            *(
                self._receive_room(origin, room_id, room_pdus, now)
                for room_id, room_pdus in by_room.items()
            )
        )
        for found in results:
            answers.update(found)
        return answers

    async def _fetch_keys(
        self, by_room: dict[str, list[JsonDict]], versions: dict[str, RoomVersion]
    ) -> None:
        """Have the key ring hold the keys the PDUs are signed with (each server once, its
        key IDs and the latest time a key must be valid at); failures are the pipeline's to
        report, per PDU."""
        keys = self._keys
        if keys is None:
            return
        wanted: dict[str, tuple[set[str], int]] = {}
        for room_id, pdus in by_room.items():
            version = versions.get(room_id)
            if version is None:
                continue
            for pdu in pdus:
                signatures = pdu.get("signatures")
                if not isinstance(signatures, dict):
                    continue
                ts = pdu.get("origin_server_ts")
                valid_at = ts if version.enforce_key_validity and isinstance(ts, int) else 0
                try:
                    servers = required_signers(pdu, version)
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue
                for server in servers:
                    theirs = signatures.get(server)
                    if not isinstance(theirs, dict):
                        continue
                    key_ids, latest = wanted.setdefault(server, (set(), 0))
                    key_ids.update(k for k in theirs if isinstance(k, str))
                    wanted[server] = (key_ids, max(latest, valid_at))
        if not wanted:
            return
        at_once = asyncio.Semaphore(KEY_FETCHES_AT_ONCE)

        async def fetch(server: str, key_ids: set[str], valid_at: int) -> None:
            async with at_once:
                try:
                    await keys.get_verify_keys(server, key_ids, valid_at)
                except Exception:
                    logger.info("key fetch failed", extra={"server": server}, exc_info=True)

        await asyncio.gather(*(fetch(s, k, v) for s, (k, v) in wanted.items()))

    async def _receive_room(
        self, origin: str, room_id: str, pdus: list[JsonDict], received_ts: int
    ) -> dict[str, JsonDict]:
        async with _RoomSlot(self._rooms_at_once) as slot:
            return await self._receive_room_now(origin, room_id, pdus, received_ts, slot)

    async def _receive_room_now(
        self,
        origin: str,
        room_id: str,
        pdus: list[JsonDict],
        received_ts: int,
        slot: _RoomSlot,
    ) -> dict[str, JsonDict]:
        version_id = await self._rooms.get_room_version(room_id)
        version = KNOWN_ROOM_VERSIONS.get(version_id) if version_id is not None else None
        if version is None:
            # Not a room of ours (yet): each PDU is answered an error, under the ID it
            # would have in the current room versions (or its own, in versions 1 and 2).
            logger.info("pdus of an unknown room", extra={"origin": origin, "room_id": room_id})
            unknown: dict[str, JsonDict] = {}
            for pdu in pdus:
                event_id = _guess_event_id(pdu)
                if event_id is not None:
                    unknown[event_id] = {"error": "Unknown room"}
            return unknown
        if not await self._acls.allows(room_id, origin):
            # spec, m.room.server_acl: a denied server's PDUs for the room are refused.
            return _errors(pdus, version, "Server is banned from this room by its ACL")
        graph = FederatedGraph(self._requests, origin, self._graph_budget_s, waiting=slot.away)
        try:
            # Steps 1 to 6 of the checks, the events the PDUs refer to and we lack asked of
            # the origin (missing events, then the state at a remaining gap).
            received = await self._pipeline.receive(room_id, pdus, received_ts, remote=graph)
        except LookupError:
            return {}
        except Exception:
            # A failure of ours in one room must not lose the other rooms' answers; the
            # sender retries these PDUs (or fetches them) later.
            logger.exception("pdus of a room failed", extra={"room_id": room_id})
            return _errors(pdus, version, "Internal error")
        out: dict[str, JsonDict] = {}
        for pdu, r in zip(pdus, received, strict=True):
            event_id = r.event_id
            if not event_id:
                try:
                    event_id = event_id_of(pdu, version)
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue
            out[event_id] = _answer(r)
        return out

    async def _receive_edu(self, origin: str, edu: Any) -> None:
        try:
            if len(orjson.dumps(edu)) > MAX_EDU_BYTES:
                logger.info("edu too large ignored", extra={"origin": origin})
                return
            # The transaction's body was read without the integer range (it is per PDU).
            try:
                check_json_limits(edu)
            except MatrixError:
                logger.info("edu with an integer out of range ignored", extra={"origin": origin})
                return
            await self._edus.receive(origin, edu)
        except Exception:
            logger.exception("edu failed", extra={"origin": origin})

    async def prune_once(self) -> None:
        await self._store.prune_inbound(self._clock.now_ms() - KEEP_ANSWERS_MS)

    async def run_pruner(self) -> None:
        """The background job: forget old answers, for ever."""
        while True:
            await self.prune_once()
            await asyncio.sleep(PRUNE_INTERVAL_S)


class _RoomSlot:
    """One of the rooms-at-once places, held while a room's PDUs are processed and given up
    while they wait on the origin (``away``, entered by each request; concurrent requests
    share one absence). Never held twice nor released twice, cancelled or not."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self._held = False
        self._away = 0
        self._taking = False

    async def __aenter__(self) -> _RoomSlot:
        await self._take()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held:
            self._held = False
            self._places.release()

    async def _take(self) -> None:
        if self._held or self._taking:
            return
        self._taking = True
        try:
            await self._places.acquire()
            self._held = True
        finally:
            self._taking = False

    @asynccontextmanager
    async def away(self) -> AsyncIterator[None]:
        self._away += 1
        if self._held:
            self._held = False
            self._places.release()
        try:
            yield
        finally:
            self._away -= 1
            if not self._away:
                await self._take()


def _errors(pdus: Sequence[JsonDict], version: RoomVersion, error: str) -> dict[str, JsonDict]:
    """The same error for each PDU (one whose ID cannot be worked out has no answer)."""
    out: dict[str, JsonDict] = {}
    for pdu in pdus:
        try:
            out[event_id_of(pdu, version)] = {"error": error}
        except (ValueError, TypeError, KeyError):
            continue
    return out


def _guess_event_id(pdu: JsonDict) -> str | None:
    event_id = pdu.get("event_id")
    if isinstance(event_id, str):
        return event_id
    try:
        return event_id_of(pdu, KNOWN_ROOM_VERSIONS["11"])
    except (ValueError, TypeError, KeyError):
        return None
