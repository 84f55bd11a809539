"""PostgreSQL: stream positions taken by several writers at once, and how far each stream
is committed with no gap.

Each stream has a sequence; a write transaction takes its position with ``nextval``, so
writers on every worker never wait for one another's commits. Positions then commit out of
order: a reader must never go past a position that is allocated and not yet committed, or
a sync token would skip that event for good.

Each database handle (one per worker process) is a *writer* with a row per stream in
``stream_writers``:

- *busy* (something in flight): its position is below every position it has in flight,
  including those whose ``nextval`` has not answered yet (each of those will be above the
  highest this writer had seen when it began, as the sequence only rises);
- *idle*: it has nothing in flight, and its position is the sequence's last value when it
  wrote the row.

A writer turns its row busy (committed) *before* its first allocation after being idle, at
the sequence's last value then; so every position up to a row's is either finished or held
by a busy row below it, and a writer's later allocations are above its row. A stream is
committed up to the lowest busy position, and no further than the highest position of any
row (``least(min(busy), max(all))``). Rows whose heartbeat is older than
``STALE_MS`` (a writer that died, its transactions aborted with its connections) are left
out, and a writer whose own heartbeat is that late refuses to commit what it allocated
before (``WriterStale``). ``stream_positions`` keeps a floor that every worker raises, so
positions never go back across restarts and for the queries that read it in SQL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.core.streams import Stream

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# Readers leave out a writer whose heartbeat is older than this (database clock) ...
STALE_MS = 8_000
# ... and a writer commits nothing it allocated if its last heartbeat was sent longer ago
# than this (its own clock): the difference is the margin for the commit's round trip.
GUARD_S = 6.0
# Rows of writers gone for this long are deleted.
FORGET_MS = 3_600_000

_NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"

# The last position the stream's sequence gave, to anyone.
_LAST_VALUE = "coalesce(pg_sequence_last_value(('stream_seq_' || {})::regclass), 0)"

# An idle row is at the last value of the sequence (see _TURN_BUSY for why that is safe).
_UPSERT = f"""
WITH mine AS (
    INSERT INTO stream_writers AS w (stream, writer, position, idle, heartbeat_ms)
    SELECT t.stream, $1,
           CASE WHEN t.idle THEN greatest(t.position, {_LAST_VALUE.format("t.stream")})
                ELSE t.position END,
           t.idle, {_NOW_MS}
    FROM unnest($2::text[], $3::bigint[], $4::boolean[]) AS t(stream, position, idle)
    ON CONFLICT (stream, writer) DO UPDATE
    SET position = greatest(w.position, excluded.position), idle = excluded.idle,
        heartbeat_ms = excluded.heartbeat_ms
    RETURNING w.stream, w.position, w.idle
), live AS (
    SELECT stream, position, idle FROM stream_writers
    WHERE writer <> $1 AND stream = ANY($2::text[])
      AND heartbeat_ms > {_NOW_MS} - {STALE_MS}
    UNION ALL
    SELECT stream, position, idle FROM mine
)
SELECT live.stream,
       greatest(min(p.position),
                least(min(live.position) FILTER (WHERE NOT live.idle), max(live.position)))
       AS upto
FROM live JOIN stream_positions AS p ON p.stream = live.stream
GROUP BY live.stream
"""

# Turning busy: at the sequence's last value. Every position up to it was taken before this
# statement, by a writer that is either done with it or busy below it (its row turned busy
# before its nextval), and this writer's next allocation comes after the commit, above it.
# So turning busy never takes a reader back.
_TURN_BUSY = f"""
INSERT INTO stream_writers AS w (stream, writer, position, idle, heartbeat_ms)
VALUES ($2, $1, greatest($3::bigint, {_LAST_VALUE.format("$2::text")}), false, {_NOW_MS})
ON CONFLICT (stream, writer) DO UPDATE
SET position = greatest(w.position, excluded.position), idle = false,
    heartbeat_ms = excluded.heartbeat_ms
RETURNING w.position
"""

_LIVE_UPTO = f"""
SELECT stream,
       least(min(position) FILTER (WHERE NOT idle), max(position)) AS upto
FROM stream_writers WHERE heartbeat_ms > {_NOW_MS} - {STALE_MS}
GROUP BY stream
"""

_CURRENT = f"""
SELECT p.stream, greatest(p.position, coalesce(w.upto, 0)) AS position
FROM stream_positions AS p LEFT JOIN ({_LIVE_UPTO}) AS w ON w.stream = p.stream
"""
# Database.current_positions on PostgreSQL.
CURRENT = sa.text(_CURRENT)


def committed_sql(stream: Stream) -> str:
    """SQL for how far ``stream`` is committed (as ``Database.current_positions``), for
    statements that need it in place."""
    return (
        f"(SELECT greatest(p.position, coalesce(w.upto, 0)) FROM stream_positions AS p "
        f"LEFT JOIN ({_LIVE_UPTO}) AS w ON w.stream = p.stream "
        f"WHERE p.stream = '{stream.value}')"
    )


_RAISE_FLOOR = "UPDATE stream_positions SET position = $2 WHERE stream = $1 AND position < $2"

_FORGET = f"DELETE FROM stream_writers WHERE heartbeat_ms < {_NOW_MS} - {FORGET_MS} OR writer = $1"


_STREAMS = {s.value: s for s in Stream}


def sequence_name(stream: Stream) -> str:
    return f"stream_seq_{stream.value}"


def next_value(stream: Stream) -> sa.TextClause:
    return sa.text(f"SELECT nextval('{sequence_name(stream)}')")


class WriterStale(RuntimeError):
    """This writer's heartbeat is too old: readers may have passed what it has in flight,
    so it must not commit it (the transaction rolls back; a retry takes a new position)."""


@dataclass(slots=True)
class _Allocation:
    stream: Stream
    floor: int  # the allocation's position is above this
    epoch: int
    position: int | None = None


class _Connection:
    """The writer's own connection for its rows: not one of the pools, so that a write
    transaction turning its writer busy holds one pooled connection only, and used under
    the writer's lock (one statement at a time).

    ``durable=False``: its commits do not wait for the WAL to reach the disk. Only for a
    flush after a write, which only ever lets readers move on: a flush a database crash
    lost takes readers back to where the durable rows held them (a stall, never a skip)
    until the next heartbeat (durable) writes the rows again. Turning busy and heartbeats
    stay durable: losing those could let readers pass a position in flight."""

    def __init__(self, url: str, *, durable: bool = True) -> None:
        self._dsn = (
            sa.engine.make_url(url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        self._settings = {} if durable else {"synchronous_commit": "off"}
        self._conn: Any = None

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        # Imported here: a server on SQLite never loads asyncpg (~5 MB).
        import asyncpg  # type: ignore[import-untyped]

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn, server_settings=self._settings)
        try:
            return list(await self._conn.fetch(sql, *args))
        except asyncpg.PostgresError:
            raise  # the statement failed; the connection is fine
        except BaseException:
            # Lost, or cancelled in the middle of a statement: a new connection next time.
            await self.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


class WriterPositions:
    """This handle's positions as a writer, on PostgreSQL (``Database.positions``)."""

    def __init__(self, name: str, url: str) -> None:
        # A process restarting under the same worker name is a new writer: the suffix keeps
        # its rows apart from those its previous life left.
        self.writer = f"{name}:{secrets.token_hex(4)}"
        self._db = _Connection(url)
        # Flushes: each write's flush would otherwise wait for an fsync of its own, under the
        # lock every write of this worker goes through.
        self._rows = _Connection(url, durable=False)
        self._ids = itertools.count()
        self._inflight: dict[int, _Allocation] = {}
        self._max_seen: dict[Stream, int] = dict.fromkeys(Stream, 0)
        self._row_idle: dict[Stream, bool] = dict.fromkeys(Stream, True)
        self._dirty: set[Stream] = set()
        self._lock = asyncio.Lock()
        self._epoch = 0
        self._heartbeat_sent = time.monotonic()
        self._floor: dict[Stream, int] = {}
        self._started = False
        # How far each stream is committed, as last computed here.
        self.upto: dict[Stream, int] = {}
        self.on_advance: list[Callable[[Stream, int], None]] = []
        self._requested = 0
        self._done = 0
        self._flushed = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None

    # -- allocating ------------------------------------------------------------------------

    async def begin(self, stream: Stream) -> int:
        """Before a ``nextval``: registers the allocation in flight (and turns this writer's
        row busy first if it was idle). Returns its handle for ``allocated`` and ``finish``."""
        if not self._started:
            await self.start()
        # Busy in the database already (``_row_idle`` turns False only once that committed,
        # and True before a flush writes the row idle): no need to wait for a flush or a
        # heartbeat holding the lock, which keep a busy row at or below this allocation.
        if not self._row_idle[stream]:
            return self._register(stream)
        async with self._lock:
            key = self._register(stream)
            if self._row_idle[stream]:
                try:
                    await self._turn_busy(stream, key)
                except BaseException:
                    del self._inflight[key]
                    raise
            return key

    async def _turn_busy(self, stream: Stream, key: int) -> None:
        rows = await self._db.fetch(
            _TURN_BUSY, self.writer, stream.value, self.own_position(stream)
        )
        # Only now: an allocation that sees the row busy takes no lock (``begin``).
        self._row_idle[stream] = False
        position = int(rows[0]["position"])
        self._inflight[key].floor = max(self._inflight[key].floor, position)
        self._max_seen[stream] = max(self._max_seen[stream], position)

    def _register(self, stream: Stream) -> int:
        key = next(self._ids)
        self._inflight[key] = _Allocation(stream, self._max_seen[stream], self._epoch)
        return key

    def allocated(self, key: int, position: int) -> None:
        allocation = self._inflight.get(key)
        if allocation is not None:
            allocation.position = position
            if position > self._max_seen[allocation.stream]:
                self._max_seen[allocation.stream] = position

    def check(self, keys: Iterable[int]) -> None:
        """Just before the commit: refuses it if readers may have left this writer out."""
        late = time.monotonic() - self._heartbeat_sent > GUARD_S
        if late or any(self._inflight[k].epoch != self._epoch for k in keys):
            self._epoch += 1
            raise WriterStale("this worker's stream positions are stale: write not committed")

    def finish(self, keys: Iterable[int]) -> None:
        """After the commit or rollback."""
        for key in keys:
            allocation = self._inflight.pop(key, None)
            if allocation is not None:
                self._dirty.add(allocation.stream)

    def own_position(self, stream: Stream) -> int:
        low = [
            a.floor if a.position is None else a.position - 1
            for a in self._inflight.values()
            if a.stream == stream
        ]
        return min(low) if low else self._max_seen[stream]

    def busy(self, stream: Stream) -> bool:
        return any(a.stream == stream for a in self._inflight.values())

    # -- publishing ------------------------------------------------------------------------

    async def flush(self) -> None:
        """Writes this writer's rows that moved, and learns how far those streams are
        committed; returns once a write begun after the call has ended (flushes coalesce)."""
        self._requested += 1
        wanted = self._requested
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        while self._done < wanted:
            flushed = self._flushed
            await flushed.wait()

    def request_flush(self) -> None:
        """A flush without waiting for it (on the way out of a failed transaction)."""
        self._requested += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while self._done < self._requested:
            target = self._requested
            streams: list[Stream] = []
            try:
                async with self._lock:
                    streams = sorted(self._dirty)
                    self._dirty.clear()
                    if streams:
                        idle = {s: not self.busy(s) for s in streams}
                        await self._write_rows(streams, stream_idle=idle, durable=False)
            except Exception:
                logger.exception("stream positions not written")
                self._dirty.update(streams)
            self._done = target
            flushed, self._flushed = self._flushed, asyncio.Event()
            flushed.set()

    async def _write_rows(
        self, streams: list[Stream], *, stream_idle: dict[Stream, bool], durable: bool = True
    ) -> None:
        for stream, idle in stream_idle.items():
            self._row_idle[stream] = idle  # before the write: an allocation waits for it
        rows = await (self._db if durable else self._rows).fetch(
            _UPSERT,
            self.writer,
            [s.value for s in streams],
            [self.own_position(s) for s in streams],
            [stream_idle[s] for s in streams],
        )
        for row in rows:
            self._learn(_STREAMS[row["stream"]], int(row["upto"]))

    def _learn(self, stream: Stream, upto: int) -> None:
        if upto > self.upto.get(stream, -1):
            self.upto[stream] = upto
            for callback in self.on_advance:
                callback(stream, upto)

    # -- heartbeats ------------------------------------------------------------------------

    def _start_heartbeats(self) -> None:
        if self._heartbeats is None:
            self._heartbeats = asyncio.create_task(self._beat_forever())

    async def start(self) -> None:
        """At start-up (or before the first allocation): the rows of every stream, idle,
        which are the first heartbeat; then a heartbeat every HEARTBEAT_S."""
        async with self._lock:
            if self._started:
                return
            sent = time.monotonic()
            await self._write_rows(list(Stream), stream_idle=dict.fromkeys(Stream, True))
            self._heartbeat_sent = sent
            self._started = True
        self._start_heartbeats()

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("stream writer heartbeat failed")
            await asyncio.sleep(HEARTBEAT_S)

    async def beat(self) -> None:
        async with self._lock:
            sent = time.monotonic()
            if sent - self._heartbeat_sent > GUARD_S:
                # Readers may have left this writer out: nothing allocated before may commit.
                self._epoch += 1
            # Every row as this writer's state has it, durably, not only the heartbeat: a
            # flush a database crash lost (``_Connection``, durable=False) is written again.
            idle = {stream: not self.busy(stream) for stream in Stream}
            await self._write_rows(list(Stream), stream_idle=idle)
            self._heartbeat_sent = sent
            # Raise the floor (a row per statement: no two workers lock rows in two orders).
            rows = await self._db.fetch(_CURRENT)
            for row in rows:
                stream = _STREAMS.get(row["stream"])
                if stream is None:
                    continue
                upto = int(row["position"])
                self._learn(stream, upto)
                if upto > self._floor.get(stream, -1):
                    await self._db.fetch(_RAISE_FLOOR, stream.value, upto)
                    self._floor[stream] = upto

    async def close(self) -> None:
        """At shut-down: stops the heartbeats and removes this writer's rows (with nothing
        in flight, it holds no reader back)."""
        for task in (self._heartbeats, self._flusher):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        try:
            if not self._inflight:
                await self.beat()  # the floor first: leaving must not take readers back
                await self._db.fetch(_FORGET, self.writer)
        except Exception:
            logger.warning("stream writer rows not removed")
        finally:
            await self._db.close()
            await self._rows.close()
