"""History of a room asked of the other servers in it when ``/messages`` reaches a gap
(a backward extremity): ``GET /backfill`` (server-server API, "Backfilling and retrieving
missing events") through ``FederatedGraph``, each answer checked and persisted by the
inbound pipeline's backfill mode (``IncomingEvents.receive_backfilled``).

The servers asked are those with a user joined to the room now, ours left out, one after
the other until one gives events we take; all of one backfill shares a time budget, and a
failure is logged, never raised (``/messages`` serves what we hold)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from homeserver.core.clock import Clock
from homeserver.federation.remote_graph import FederatedGraph, Requests
from homeserver.rooms.incoming import IncomingEvents, Outcome, RemoteGraphError

logger = logging.getLogger(__name__)

# How long one backfill may take, every server asked and every event checked together.
BACKFILL_BUDGET_S = 20.0
# How many servers are asked, at most, before giving up for this page.
MAX_SERVERS_ASKED = 5


class JoinedServers(Protocol):
    async def joined_servers(self, room_id: str) -> list[str]: ...


class RoomBackfill:
    """``rooms.service.Backfiller`` over federation."""

    def __init__(
        self,
        requests: Requests,
        incoming: IncomingEvents,
        servers: JoinedServers,
        clock: Clock,
        server_name: str,
        budget_s: float = BACKFILL_BUDGET_S,
    ) -> None:
        self._requests = requests
        self._incoming = incoming
        self._servers = servers
        self._clock = clock
        self._server_name = server_name
        self._budget_s = budget_s

    async def backfill(self, room_id: str, from_event_ids: Sequence[str], limit: int) -> int:
        """Ask the room's other servers for the events before ``from_event_ids``; how many
        events were taken (0: none had any we could take)."""
        servers = [s for s in await self._servers.joined_servers(room_id) if s != self._server_name]
        for server in servers[:MAX_SERVERS_ASKED]:
            graph = FederatedGraph(self._requests, server, self._budget_s)
            try:
                pdus = await graph.backfill(room_id, from_event_ids, limit)
                received = await self._incoming.receive_backfilled(
                    room_id, pdus, self._clock.now_ms(), graph
                )
            except RemoteGraphError as e:
                logger.info(
                    "backfill failed", extra={"room_id": room_id, "server": server, "error": str(e)}
                )
                continue
            taken = sum(1 for r in received if r.outcome is Outcome.ACCEPTED)
            if taken:
                return taken
            logger.info("backfill gave nothing", extra={"room_id": room_id, "server": server})
        return 0
