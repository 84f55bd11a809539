"""The admin API on federation destinations (Synapse's ``/_synapse/admin/v1/federation/
destinations...``, issue 22): the outbound sender's back-off per destination, the rooms
shared with one, and a back-off ended so the sender tries the destination again at once.

Every method takes the requester and refuses anyone but a server administrator first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from homeserver.admin.users import require_admin
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import is_valid_server_name
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.admin_federation import AdminFederationStore, DestinationRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    offset: int
    limit: int
    order_by: str = "destination"
    backwards: bool = False


def destination_json(d: DestinationRow) -> JsonDict:
    """Synapse's fields. The sender keeps the current back-off and the time of the next
    attempt, not the time of the last failure nor when failures began: the last attempt is
    the next one less the back-off, and both are 0 while the destination answers."""
    failing = d.retry_interval_ms > 0
    last = max(d.retry_at_ts - d.retry_interval_ms, 0) if failing else 0
    return {
        "destination": d.destination,
        "retry_last_ts": last,
        "retry_interval": d.retry_interval_ms,
        "failure_ts": last if failing else None,
        "last_successful_stream_ordering": None,
    }


class AdminFederation:
    def __init__(self, store: AdminFederationStore, wake_sender: Callable[[], None]) -> None:
        self._store = store
        self._wake_sender = wake_sender

    async def destinations(
        self, requester: Requester, page: Page, search: str | None
    ) -> tuple[list[JsonDict], int, int | None]:
        require_admin(requester)
        found, total = await self._store.list_destinations(
            page.offset, page.limit, page.order_by, page.backwards, search
        )
        next_offset = page.offset + len(found)
        return (
            [destination_json(d) for d in found],
            total,
            next_offset if next_offset < total else None,
        )

    async def destination(self, requester: Requester, destination: str) -> JsonDict:
        require_admin(requester)
        return destination_json(await self._known(destination))

    async def rooms(
        self, requester: Requester, destination: str, page: Page
    ) -> tuple[list[JsonDict], int, int | None]:
        require_admin(requester)
        await self._known(destination)
        found, total = await self._store.destination_rooms(
            destination, page.offset, page.limit, page.backwards
        )
        next_offset = page.offset + len(found)
        rooms: list[JsonDict] = [
            {"room_id": r.room_id, "stream_ordering": r.stream_ordering} for r in found
        ]
        return rooms, total, next_offset if next_offset < total else None

    async def reset_connection(self, requester: Requester, destination: str) -> None:
        require_admin(requester)
        await self._known(destination)
        await self._store.reset_backoff(destination)
        self._wake_sender()
        logger.info("federation back-off reset", extra={"destination": destination})

    async def _known(self, destination: str) -> DestinationRow:
        if not is_valid_server_name(destination):
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid server name: {destination}")
        found = await self._store.get_destination(destination)
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown destination")
        return found
