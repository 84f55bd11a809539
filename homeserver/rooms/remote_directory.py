"""Other servers' published room directories, for our clients' ``publicRooms?server=``.

Asked of the server with ``/_matrix/federation/v1/publicRooms`` (GET, or POST when a filter
is given). An unfiltered page is kept a short while, as many clients open the same
directory; filtered searches are always asked afresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import cachetools

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict

logger = logging.getLogger(__name__)

# Synapse keeps an unfiltered remote page ten minutes.
CACHE_MS = 10 * 60 * 1000
CACHE_ENTRIES = 1024
PATH = "/_matrix/federation/v1/publicRooms"


class DirectoryRequests(Protocol):
    """What of ``FederationClient`` this needs; its errors carry ``status`` and
    ``errcode`` of the remote's answer (None when no answer came)."""

    async def request(
        self,
        destination: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        content: Any | None = None,
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class RemoteRoomsQuery:
    limit: int | None
    since: str | None
    search_term: str | None
    room_types: tuple[str | None, ...] | None
    include_all_networks: bool
    third_party_instance_id: str | None

    @property
    def filtered(self) -> bool:
        return self.search_term is not None or self.room_types is not None


class RemoteDirectories:
    def __init__(self, client: DirectoryRequests, clock: Clock, failure: type[Exception]) -> None:
        self._client = client
        self._clock = clock
        # The client's error type (FederationError), given so that rooms/ need not import
        # federation.
        self._failure = failure
        self._cache: cachetools.LRUCache[tuple[object, ...], tuple[int, JsonDict]] = (
            cachetools.LRUCache(CACHE_ENTRIES)
        )

    async def public_rooms(self, server_name: str, query: RemoteRoomsQuery) -> JsonDict:
        key = (
            server_name,
            query.limit,
            query.since,
            query.include_all_networks,
            query.third_party_instance_id,
        )
        now = self._clock.now_ms()
        if not query.filtered:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        try:
            if query.filtered:
                try:
                    answer = await self._post(server_name, query)
                except self._failure as e:
                    if not _unknown_endpoint(e):
                        raise
                    return await self._filtered_here(server_name, query)
            else:
                answer = await self._get(server_name, query)
        except self._failure as e:
            logger.info("remote room directory failed", extra={"server": server_name})
            raise MatrixError(
                Codes.UNKNOWN, f"Failed to fetch the room directory of {server_name}", status=502
            ) from e
        result = _checked(answer)
        if not query.filtered:
            self._cache[key] = (now + CACHE_MS, result)
        return result

    async def _filtered_here(self, server_name: str, query: RemoteRoomsQuery) -> JsonDict:
        """A server that cannot search (no POST publicRooms): its whole directory, filtered
        here, one page without pagination (as Synapse does)."""
        everything = RemoteRoomsQuery(
            None, None, None, None, query.include_all_networks, query.third_party_instance_id
        )
        page = await self.public_rooms(server_name, everything)
        term = (query.search_term or "").casefold()
        chunk = [
            room
            for room in page["chunk"]
            if _matches(room, term)
            and (query.room_types is None or room.get("room_type") in query.room_types)
        ]
        if query.limit is not None:
            chunk = chunk[: query.limit]
        return {"chunk": chunk}

    async def _get(self, server_name: str, query: RemoteRoomsQuery) -> Any:
        params: dict[str, Any] = {"include_all_networks": str(query.include_all_networks).lower()}
        if query.limit is not None:
            params["limit"] = str(query.limit)
        if query.since is not None:
            params["since"] = query.since
        if query.third_party_instance_id is not None:
            params["third_party_instance_id"] = query.third_party_instance_id
        return await self._client.request(server_name, "GET", PATH, query=params)

    async def _post(self, server_name: str, query: RemoteRoomsQuery) -> Any:
        body: JsonDict = {"include_all_networks": query.include_all_networks}
        if query.limit is not None:
            body["limit"] = query.limit
        if query.since is not None:
            body["since"] = query.since
        if query.third_party_instance_id is not None:
            body["third_party_instance_id"] = query.third_party_instance_id
        room_filter: JsonDict = {}
        if query.search_term is not None:
            room_filter["generic_search_term"] = query.search_term
        if query.room_types is not None:
            room_filter["room_types"] = list(query.room_types)
        body["filter"] = room_filter
        return await self._client.request(server_name, "POST", PATH, content=body)


def _checked(answer: Any) -> JsonDict:
    """The remote's page, if it has the shape of one: a list of room objects."""
    if not isinstance(answer, dict) or not isinstance(answer.get("chunk"), list):
        raise MatrixError(
            Codes.UNKNOWN, "The remote server's room directory is malformed", status=502
        )
    result: JsonDict = {
        "chunk": [
            room
            for room in answer["chunk"]
            if isinstance(room, dict) and isinstance(room.get("room_id"), str)
        ]
    }
    for token in ("next_batch", "prev_batch"):
        if isinstance(answer.get(token), str):
            result[token] = answer[token]
    estimate = answer.get("total_room_count_estimate")
    if isinstance(estimate, int) and not isinstance(estimate, bool) and estimate >= 0:
        result["total_room_count_estimate"] = estimate
    return result


def _unknown_endpoint(error: Exception) -> bool:
    status = getattr(error, "status", None)
    errcode = getattr(error, "errcode", None)
    if status in (404, 405):
        return errcode in (None, Codes.UNRECOGNIZED)
    return status == 400 and errcode == Codes.UNRECOGNIZED


def _matches(room: JsonDict, term: str) -> bool:
    if not term:
        return True
    return any(
        isinstance(room.get(field), str) and term in room[field].casefold()
        for field in ("name", "topic", "canonical_alias")
    )
