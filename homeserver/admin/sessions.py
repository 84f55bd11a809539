"""Where sessions are seen from: each authenticated request's address and user agent, kept
per device for the admin API's whois and device lists (their ``last_seen_*``)."""

from __future__ import annotations

import asyncio
import logging

from cachetools import TTLCache

from homeserver.core.clock import Clock
from homeserver.core.types import Requester
from homeserver.storage.admin import AdminStore

logger = logging.getLogger(__name__)

# A session seen again from the same address and agent is written at most this often: a
# write per request would cost more than the request; "last seen" to within minutes is what
# an administrator needs (as Synapse).
RECORD_INTERVAL_MS = 5 * 60 * 1000
# Sessions remembered per worker; one forgotten early is only written again sooner.
MAX_REMEMBERED = 100_000
MAX_USER_AGENT_CHARS = 512
# Addresses are personal data: kept as long as an administrator plausibly needs them to
# investigate abuse, then forgotten (as Synapse's default).
KEEP_CONNECTIONS_MS = 28 * 24 * 3600 * 1000
PRUNE_INTERVAL_S = 3600.0


class SessionRecorder:
    def __init__(self, store: AdminStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._written: TTLCache[tuple[int, str, str], int] = TTLCache(
            maxsize=MAX_REMEMBERED, ttl=RECORD_INTERVAL_MS / 1000, timer=self._now_s
        )

    def _now_s(self) -> float:
        return self._clock.now_ms() / 1000

    async def run_pruner(self) -> None:
        """Background job: forget where sessions were seen, past ``KEEP_CONNECTIONS_MS``."""
        while True:
            await self.prune()
            await asyncio.sleep(PRUNE_INTERVAL_S)

    async def prune(self) -> None:
        pruned = await self._store.prune_connections(self._clock.now_ms() - KEEP_CONNECTIONS_MS)
        if pruned:
            logger.info("old session addresses pruned", extra={"count": pruned})

    async def seen(self, requester: Requester, ip: str, user_agent: str) -> None:
        user_agent = user_agent[:MAX_USER_AGENT_CHARS]
        key = (requester.token_id, ip, user_agent)
        if key in self._written:
            return
        now = self._clock.now_ms()
        self._written[key] = now
        await self._store.record_connection(
            requester.user_id, requester.device_id, ip, user_agent, now
        )
