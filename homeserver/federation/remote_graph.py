"""The room graph as one other server tells it (``rooms/incoming.py``'s ``RemoteGraph``),
over signed federation requests: ``POST /get_missing_events``, ``GET /state_ids`` and
``GET /event`` (server-server API, "Retrieving events" and "Room state"), and the room's
history before some events, ``GET /backfill`` ("Backfilling and retrieving missing
events").

Every answer is shape-checked before the pipeline sees it: an answer that is not what the
spec describes, too large, an error or no answer at all is a ``RemoteGraphError``; what the
answers contain (events) is then checked by the pipeline like any PDU. Events are fetched
one request each, a few at a time; a server that stops answering ends the fetch, and all
the requests of one ``FederatedGraph`` share a time budget."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol
from urllib.parse import quote

from homeserver.core.types import JsonDict
from homeserver.federation.client import FederationError
from homeserver.rooms.incoming import RemoteGraphError, RemoteState

logger = logging.getLogger(__name__)

FED = "/_matrix/federation/v1"
# spec, "Size limits": a PDU is at most 65 536 bytes.
MAX_PDU_BYTES = 65_536
# /get_missing_events: the events asked for, each a PDU, in an object.
MAX_MISSING_LIMIT = 100
# /state_ids: the state and auth chain IDs of one event; the pipeline refuses more than it
# fetches (MAX_FETCHED_EVENTS) anyway, this bounds what we read and decode.
MAX_STATE_IDS = 100_000
MAX_STATE_IDS_BYTES = 16 * 1024 * 1024
# /backfill: at most this many events asked for, each a PDU, in a transaction envelope;
# and at most this many events to start from.
MAX_BACKFILL_LIMIT = 100
MAX_BACKFILL_FROM = 20
# /event: one PDU in a transaction envelope.
MAX_EVENT_BYTES = 2 * MAX_PDU_BYTES
# Event requests in flight at once to the one server.
EVENT_FETCH_CONCURRENCY = 8
# All the requests for one transaction's room together: a slow origin cannot hold a
# transaction (and the rooms-at-once slot it takes) for longer; it retries later.
DEFAULT_BUDGET_S = 120.0
# IDs longer than this are no event IDs of any room version (v1-2 IDs are bounded by the
# PDU size limit, v3+ are 44 characters).
MAX_EVENT_ID_BYTES = 255


class Requests(Protocol):
    """Signed requests to other servers (``FederationClient.request``)."""

    async def request(
        self,
        destination: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        content: Any | None = None,
        max_bytes: int = ...,
        int_range: bool = ...,
    ) -> Any: ...


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value.encode()) <= MAX_EVENT_ID_BYTES


class FederatedGraph:
    """``RemoteGraph`` over the federation API of ``origin`` (the server that sent the
    events being received)."""

    def __init__(
        self,
        requests: Requests,
        origin: str,
        budget_s: float = DEFAULT_BUDGET_S,
        *,
        waiting: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """``waiting`` is entered around each request (the caller gives up what it must not
        hold while the origin takes its time)."""
        self._requests = requests
        self.origin = origin
        self._deadline = asyncio.get_running_loop().time() + budget_s
        self._waiting = waiting

    async def _within_budget(self, method: str, path: str, **kwargs: Any) -> Any:
        """The request, or TimeoutError once the budget is spent."""
        left = self._deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError
        async with self._waiting(), asyncio.timeout(left):
            return await self._requests.request(self.origin, method, path, **kwargs)

    async def _ask(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return await self._within_budget(method, path, **kwargs)
        except FederationError as e:
            raise RemoteGraphError(f"{what}: {e}") from e
        except TimeoutError as e:
            raise RemoteGraphError(f"{what}: out of time") from e

    async def get_missing_events(
        self,
        room_id: str,
        earliest: Sequence[str],
        latest: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> Sequence[JsonDict]:
        limit = max(1, min(limit, MAX_MISSING_LIMIT))
        body = {
            "earliest_events": list(earliest),
            "latest_events": list(latest),
            "limit": limit,
            "min_depth": min_depth,
        }
        answer = await self._ask(
            "get_missing_events",
            "POST",
            f"{FED}/get_missing_events/{quote(room_id, safe='')}",
            content=body,
            max_bytes=(limit + 1) * MAX_PDU_BYTES,
            int_range=False,
        )
        events = answer.get("events") if isinstance(answer, dict) else None
        if not isinstance(events, list):
            raise RemoteGraphError("get_missing_events: no events list in the answer")
        if len(events) > limit:
            raise RemoteGraphError("get_missing_events: more events than asked for")
        if not all(isinstance(e, dict) for e in events):
            raise RemoteGraphError("get_missing_events: an event is not an object")
        return events

    async def get_state_ids(self, room_id: str, event_id: str) -> RemoteState:
        answer = await self._ask(
            "state_ids",
            "GET",
            f"{FED}/state_ids/{quote(room_id, safe='')}",
            query={"event_id": event_id},
            max_bytes=MAX_STATE_IDS_BYTES,
        )
        if not isinstance(answer, dict):
            raise RemoteGraphError("state_ids: the answer is not an object")
        state = answer.get("pdu_ids")
        chain = answer.get("auth_chain_ids")
        if not isinstance(state, list) or not isinstance(chain, list):
            raise RemoteGraphError("state_ids: pdu_ids and auth_chain_ids must be lists")
        if len(state) + len(chain) > MAX_STATE_IDS:
            raise RemoteGraphError("state_ids: too many event IDs")
        if not all(_is_id(i) for i in state) or not all(_is_id(i) for i in chain):
            raise RemoteGraphError("state_ids: an event ID is not a string")
        return RemoteState(state, chain)

    async def get_events(self, room_id: str, event_ids: Collection[str]) -> Sequence[JsonDict]:
        """The events the server gives, in no particular order (the ones it does not know
        are left out); raises when it stops answering or fails (5xx) on one."""
        wanted = list(dict.fromkeys(event_ids))
        found: list[JsonDict] = []
        if not wanted:
            return found
        queue: asyncio.Queue[str] = asyncio.Queue()
        for event_id in wanted:
            queue.put_nowait(event_id)
        failures: list[RemoteGraphError] = []

        async def worker() -> None:
            # After a failure no new request starts; the ones under way end by themselves
            # (cancelling a request in the middle of its answer would leave its connection
            # to the garbage collector).
            while not failures:
                try:
                    event_id = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    pdu = await self._get_event(event_id)
                except RemoteGraphError as e:
                    failures.append(e)
                    return
                if pdu is not None:
                    found.append(pdu)

        await asyncio.gather(*(worker() for _ in range(min(EVENT_FETCH_CONCURRENCY, len(wanted)))))
        if failures:
            raise failures[0]
        return found

    async def _get_event(self, event_id: str) -> JsonDict | None:
        """One event (GET /event/{eventId}); None when the server says it has none."""
        try:
            answer = await self._within_budget(
                "GET",
                f"{FED}/event/{quote(event_id, safe='')}",
                max_bytes=MAX_EVENT_BYTES,
                int_range=False,
            )
        except TimeoutError as e:
            raise RemoteGraphError("event: out of time") from e
        except FederationError as e:
            if e.status is not None and 400 <= e.status < 500:
                logger.info("event not given", extra={"origin": self.origin, "event_id": event_id})
                return None
            raise RemoteGraphError(f"event: {e}") from e
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(pdus, list) or len(pdus) != 1 or not isinstance(pdus[0], dict):
            # One bad answer tells nothing of the others: this event is not to be had.
            logger.info("bad event answer", extra={"origin": self.origin, "event_id": event_id})
            return None
        pdu: JsonDict = pdus[0]
        return pdu

    async def backfill(
        self, room_id: str, from_event_ids: Sequence[str], limit: int
    ) -> Sequence[JsonDict]:
        """The events before ``from_event_ids`` (and those events), as the server gives them
        (``GET /backfill``): at most ``limit``, each an object; what they are is for the
        pipeline to check (``IncomingEvents.receive_backfilled``)."""
        limit = max(1, min(limit, MAX_BACKFILL_LIMIT))
        starts = [i for i in dict.fromkeys(from_event_ids) if _is_id(i)][:MAX_BACKFILL_FROM]
        if not starts:
            raise RemoteGraphError("backfill: no event to start from")
        answer = await self._ask(
            "backfill",
            "GET",
            f"{FED}/backfill/{quote(room_id, safe='')}",
            query={"v": starts, "limit": str(limit)},
            max_bytes=(limit + 1) * MAX_PDU_BYTES,
            int_range=False,
        )
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(pdus, list):
            raise RemoteGraphError("backfill: no pdus list in the answer")
        if len(pdus) > limit:
            raise RemoteGraphError("backfill: more events than asked for")
        if not all(isinstance(e, dict) for e in pdus):
            raise RemoteGraphError("backfill: an event is not an object")
        return pdus
