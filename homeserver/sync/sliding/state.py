"""Per-connection state: which rooms a connection was sent, and up to where.

A connection is (user, device, ``conn_id``). Each response gets a new position (the number
in ``pos``) holding the state after it; the next request names the position it builds on.
Positions are stored (``sliding_sync_positions``), so a connection survives a restart and
any worker can serve it; a position never changes, so a worker may keep each connection's
newest one in memory.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cachetools import LRUCache

from homeserver.core import jsonutil
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.streams import StreamToken
from homeserver.core.types import Requester
from homeserver.storage.sliding_sync import SlidingSyncStore

logger = logging.getLogger(__name__)

# A connection unused for this long is forgotten; its client starts over (M_UNKNOWN_POS).
CONNECTION_TTL_MS = 7 * 24 * 3600 * 1000
# Connections kept per device: a client opens one or two (Element X: one per process).
MAX_CONNECTIONS_PER_DEVICE = 10
# Connections whose newest position this worker keeps in memory.
CONNECTIONS_KEPT = 10_000
# Lazily loaded members remembered per room; past this, a member may be sent again (the
# spec allows redundant members, as in /sync's lazy loading).
MAX_LAZY_MEMBERS = 100
EXPIRY_INTERVAL_S = 3600.0
MAX_DIGITS = 18  # a position fits a signed 64-bit column


@dataclass(frozen=True, slots=True)
class RoomStatus:
    """What a connection has of a room.

    ``live``: everything up to the connection's events position (the one in ``pos``);
    otherwise everything up to ``position`` only (events came while the room was out of
    every window). ``membership`` as sent: a change sends the room from scratch again.
    ``config``: the ``required_state`` it was sent with (``RequiredState.key()``).
    """

    live: bool
    position: int
    membership: str
    config: str
    lazy_members: tuple[str, ...] = ()
    timeline_limit: int = 0  # the longest timeline the client holds (see rooms.py)


@dataclass(frozen=True, slots=True)
class ConnectionState:
    rooms: Mapping[str, RoomStatus]

    def to_json(self) -> str:
        configs: dict[str, int] = {}
        rooms = {}
        for room_id, s in self.rooms.items():
            index = configs.setdefault(s.config, len(configs))
            rooms[room_id] = [
                int(s.live),
                s.position,
                s.membership,
                index,
                list(s.lazy_members),
                s.timeline_limit,
            ]
        return jsonutil.dumps_str({"v": 1, "configs": list(configs), "rooms": rooms})

    @classmethod
    def from_json(cls, raw: str) -> ConnectionState:
        data = jsonutil.loads(raw)
        configs = data["configs"]
        return cls(
            {
                room_id: RoomStatus(
                    bool(live), int(position), membership, configs[index], tuple(lazy), int(limit)
                )
                for room_id, (live, position, membership, index, lazy, limit) in data[
                    "rooms"
                ].items()
            }
        )


EMPTY = ConnectionState({})


@dataclass(frozen=True, slots=True)
class Position:
    """A parsed ``pos``: the connection position and the stream positions it was sent at."""

    connection: int
    token: StreamToken

    @classmethod
    def parse(cls, raw: str) -> Position:
        number, _, token = raw.partition("/")
        if not (number.isascii() and number.isdigit() and len(number) <= MAX_DIGITS) or not token:
            raise MatrixError(Codes.INVALID_PARAM, "Invalid pos")
        return cls(int(number), StreamToken.parse(token))

    def serialize(self) -> str:
        return f"{self.connection}/{self.token.serialize()}"


class Connections:
    """Loads and stores connection positions, checked against the requester.

    A response does not wait for its position to be stored: the write (a durable commit)
    would be most of an incremental response's time. The position is kept in memory, so the
    connection's next request on this worker needs no read; a read here first waits for this
    worker's pending writes of the connection. A position lost to a crash before its write,
    or asked of another worker before it, answers M_UNKNOWN_POS: the client starts over,
    which the MSC allows at any time.
    """

    def __init__(self, store: SlidingSyncStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        # Each connection's newest position, which its next request most likely names.
        self._kept: LRUCache[tuple[str, str, str], tuple[int, ConnectionState]] = LRUCache(
            maxsize=CONNECTIONS_KEPT
        )
        # Each connection's last pending write: the next one waits for it (they apply in
        # order).
        self._writing: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._last_position = 0
        self._worker_bits = secrets.randbits(8)

    async def load(self, requester: Requester, conn_id: str, position: int) -> ConnectionState:
        """The state at ``position``; ``M_UNKNOWN_POS`` if this connection has no such
        position (expired, replaced, or another connection's)."""
        key = (requester.user_id, requester.device_id, conn_id)
        kept = self._kept.get(key)
        if kept is not None and kept[0] == position:
            return kept[1]
        pending = self._writing.get(key)
        if pending is not None:
            await asyncio.gather(asyncio.shield(pending), return_exceptions=True)
        stored = await self._store.get_position(position)
        if (
            stored is None
            or (stored.user_id, stored.device_id, stored.conn_id) != key
            or stored.created_ts < self._clock.now_ms() - CONNECTION_TTL_MS
        ):
            raise MatrixError(Codes.UNKNOWN_POS, "Unknown position: start the connection over")
        return ConnectionState.from_json(stored.state)

    async def save(
        self, requester: Requester, conn_id: str, state: ConnectionState, used: int | None
    ) -> int:
        """Keep the state after a response and start storing it; returns its position."""
        key = (requester.user_id, requester.device_id, conn_id)
        position = self._new_position()
        self._kept[key] = (position, state)
        previous = self._writing.get(key)
        task = asyncio.create_task(
            self._write(key, previous, position, state.to_json(), self._clock.now_ms(), used)
        )
        self._writing[key] = task
        task.add_done_callback(lambda done: self._written(key, done))
        return position

    async def flush(self) -> None:
        """Wait for every pending write (at shutdown)."""
        await asyncio.gather(*self._writing.values(), return_exceptions=True)

    def _new_position(self) -> int:
        """Increasing on this worker and with time (a connection's newer position is larger,
        which dropping the older ones relies on); unique across workers by a random byte."""
        candidate = (self._clock.now_ms() << 16) | (self._worker_bits << 8)
        self._last_position = max(candidate, self._last_position + 1)
        return self._last_position

    async def _write(
        self,
        key: tuple[str, str, str],
        previous: asyncio.Task[None] | None,
        position: int,
        state: str,
        now_ms: int,
        used: int | None,
    ) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        await self._store.add_position(
            *key, position, state, now_ms, used=used, max_connections=MAX_CONNECTIONS_PER_DEVICE
        )

    def _written(self, key: tuple[str, str, str], task: asyncio.Task[None]) -> None:
        if self._writing.get(key) is task:
            del self._writing[key]
        if not task.cancelled() and task.exception() is not None:
            logger.warning(
                "sliding sync position not stored",
                exc_info=task.exception(),
                extra={"user_id": key[0]},
            )

    async def expire_once(self) -> None:
        dropped = await self._store.expire(self._clock.now_ms() - CONNECTION_TTL_MS)
        if dropped:
            logger.info("sliding sync positions expired", extra={"positions": dropped})


def with_lazy(status: RoomStatus, members: set[str]) -> RoomStatus:
    """The status with more lazily loaded members remembered (the newest kept)."""
    known = [m for m in status.lazy_members if m not in members] + sorted(members)
    return replace(status, lazy_members=tuple(known[-MAX_LAZY_MEMBERS:]))
