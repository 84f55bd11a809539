"""Federation transactions, both ways: inbound transactions already answered, the outbound
sender's cursor and per-destination queues of PDUs and EDUs, and the back-off of each
destination."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.schema import (
    events,
    federation_destinations,
    federation_device_list_sent,
    federation_inbound_txns,
    federation_outbound_edus,
    federation_outbound_pdus,
    federation_sender_positions,
    room_memberships,
)


@dataclass(frozen=True, slots=True)
class Destination:
    destination: str
    retry_interval_ms: int  # 0: answering
    retry_at_ts: int
    next_txn_id: int
    catching_up: bool


@dataclass(frozen=True, slots=True)
class QueuedPdu:
    stream_ordering: int
    room_id: str
    event_id: str


@dataclass(frozen=True, slots=True)
class QueuedEdu:
    id: int
    edu_type: str
    content_json: str
    queued_ts: int


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event of the stream, as the sender needs it to pick destinations."""

    stream_ordering: int
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    state_group: int  # the state at the event (after it, for a state event)


@dataclass(frozen=True, slots=True)
class OutboundPdu:
    destination: str
    stream_ordering: int
    room_id: str
    event_id: str


def _destination(r: sa.Row[tuple[object, ...]]) -> Destination:
    return Destination(
        str(r.destination),
        int(r.retry_interval_ms),
        int(r.retry_at_ts),
        int(r.next_txn_id),
        bool(r.catching_up),
    )


# The sender's statements run at every round (every send, at most every GATHER_S): built
# once, on the lean path (building and compiling a statement costs more than running it).
_fsp = federation_sender_positions
_POSITION = prepared(sa.select(_fsp.c.position).where(_fsp.c.name == sa.bindparam("cursor")))
_MOVE_CURSOR = prepared(
    sa.update(_fsp)
    .where(_fsp.c.name == sa.bindparam("cursor"), _fsp.c.position == sa.bindparam("after"))
    .values(position=sa.bindparam("upto")),
    columns=("cursor", "after", "upto"),
)
_NEW_EVENTS = prepared(
    sa.select(
        events.c.stream_ordering,
        events.c.event_id,
        events.c.room_id,
        events.c.type,
        events.c.state_key,
        events.c.sender,
        events.c.state_group,
    )
    .where(
        events.c.stream_ordering > sa.bindparam("after"),
        events.c.stream_ordering <= sa.bindparam("upto"),
    )
    .order_by(events.c.stream_ordering)
    .limit(sa.bindparam("limit"))
)
_m = room_memberships
_REMOTE_MEMBERS = prepared(
    sa.select(_m.c.room_id, _m.c.user_id, _m.c.stream_ordering).where(
        _m.c.room_id.in_(sa.bindparam("room_ids", expanding=True)),
        _m.c.membership == "join",
        _m.c.user_id.not_like(sa.bindparam("local"), escape="/"),
    )
)
_fd = federation_destinations
_PENDING = sa.union(
    sa.select(federation_outbound_pdus.c.destination),
    sa.select(federation_outbound_edus.c.destination),
).subquery()
_DUE = prepared(
    sa.select(_fd.c.destination)
    .where(
        _fd.c.retry_at_ts <= sa.bindparam("now_ms"),
        _fd.c.destination.in_(sa.select(_PENDING.c.destination)),
    )
    .order_by(_fd.c.retry_at_ts, _fd.c.destination)
    .limit(sa.bindparam("limit"))
)
_NEXT_RETRY = prepared(
    sa.select(sa.func.min(_fd.c.retry_at_ts)).where(
        _fd.c.retry_at_ts > sa.bindparam("now_ms"),
        _fd.c.destination.in_(sa.select(_PENDING.c.destination)),
    )
)


_NEW = ("destination", "retry_interval_ms", "retry_at_ts", "next_txn_id", "catching_up")


def _like_literal(text: str) -> str:
    """``text`` for a LIKE pattern escaped with ``/``."""
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


class FederationQueueStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- inbound -------------------------------------------------------------------------

    async def get_inbound_txn(self, origin: str, txn_id: str) -> str | None:
        """The response already given to this transaction, as JSON; None if it is new."""
        query = sa.select(federation_inbound_txns.c.response_json).where(
            federation_inbound_txns.c.origin == origin, federation_inbound_txns.c.txn_id == txn_id
        )
        async with self._db.read() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        return None if found is None else str(found)

    async def put_inbound_txn(
        self, origin: str, txn_id: str, response_json: str, received_ts: int
    ) -> None:
        row = {
            "origin": origin,
            "txn_id": txn_id,
            "response_json": response_json,
            "received_ts": received_ts,
        }
        async with self._db.write() as conn:
            await conn.execute(
                self._db.insert_ignore(federation_inbound_txns, row, ("origin", "txn_id"))
            )

    async def prune_inbound(self, before_ts: int) -> None:
        """Forget the answers to transactions received before ``before_ts``."""
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(federation_inbound_txns).where(
                    federation_inbound_txns.c.received_ts < before_ts
                )
            )

    # --- the events stream ---------------------------------------------------------------

    async def get_position(self, name: str) -> int | None:
        async with self._db.read() as conn:
            found = (await conn.execute(_POSITION, {"cursor": name})).scalar_one_or_none()
        return None if found is None else int(found)

    async def get_new_events(self, after: int, upto: int, limit: int) -> list[NewEvent]:
        """Events of the stream in ``(after, upto]``, oldest first, at most ``limit``."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(_NEW_EVENTS, {"after": after, "upto": upto, "limit": limit})
            ).all()
        return [
            NewEvent(
                int(r.stream_ordering),
                r.event_id,
                r.room_id,
                r.type,
                r.state_key,
                r.sender,
                int(r.state_group),
            )
            for r in rows
        ]

    async def get_remote_members(
        self, room_ids: Collection[str], local_server: str
    ) -> dict[str, dict[str, int]]:
        """The joined members of each room who are not on ``local_server``, with the stream
        position of the event that made each what they are (a room of our users only reads
        no row)."""
        if not room_ids:
            return {}
        params = {"room_ids": list(room_ids), "local": f"%:{_like_literal(local_server)}"}
        async with self._db.read() as conn:
            rows = (await conn.execute(_REMOTE_MEMBERS, params)).all()
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r.room_id, {})[r.user_id] = int(r.stream_ordering)
        return out

    async def get_rooms_of(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """The rooms each user is joined to."""
        users = list(user_ids)
        if not users:
            return {}
        query = sa.select(room_memberships.c.user_id, room_memberships.c.room_id).where(
            room_memberships.c.user_id.in_(users), room_memberships.c.membership == "join"
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r.user_id, []).append(r.room_id)
        return out

    async def queue_pdus(
        self, name: str, rows: Sequence[OutboundPdu], after: int | None, upto: int
    ) -> bool:
        """Queue PDUs and move the cursor ``name`` from ``after`` to ``upto``, together;
        False (nothing done) if the cursor is no longer at ``after``."""
        async with self._db.write() as conn:
            if after is None:
                insert = self._db.insert_ignore_statement(
                    federation_sender_positions, ("name",), ("name", "position")
                )
                moved = await conn.execute(insert, {"name": name, "position": upto})
            else:
                moved = await conn.execute(
                    _MOVE_CURSOR, {"cursor": name, "after": after, "upto": upto}
                )
            if moved.rowcount != 1:
                return False
            if rows:
                await self._ensure_destinations(conn, {r.destination for r in rows})
                insert = self._db.insert_ignore_statement(
                    federation_outbound_pdus,
                    ("destination", "stream_ordering"),
                    ("destination", "stream_ordering", "room_id", "event_id"),
                )
                await conn.execute(
                    insert,
                    [
                        {
                            "destination": r.destination,
                            "stream_ordering": r.stream_ordering,
                            "room_id": r.room_id,
                            "event_id": r.event_id,
                        }
                        for r in rows
                    ],
                )
        return True

    # --- EDUs ----------------------------------------------------------------------------

    async def queue_edu(
        self,
        destinations: Collection[str],
        edu_type: str,
        content_json: str,
        coalesce_key: str | None,
        queued_ts: int,
    ) -> None:
        """Queue one EDU for each destination; one of the same ``coalesce_key`` still queued
        is replaced."""
        if not destinations:
            return
        async with self._db.write() as conn:
            await self._ensure_destinations(conn, destinations)
            for destination in sorted(destinations):
                await self._insert_edu(
                    conn, destination, edu_type, content_json, coalesce_key, queued_ts
                )

    async def queue_device_list_update(
        self,
        destinations: Collection[str],
        edu_type: str,
        user_id: str,
        device_id: str,
        content_json: str,
        marker_json: str,
        keep: int,
        queued_ts: int,
    ) -> int:
        """Queue an ``m.device_list_update`` about one device for each destination, replacing
        a queued one about the same device. Past ``keep`` queued about the user for one
        destination, only the newest stays, as ``marker_json`` (an update that makes the
        destination fetch the whole list again); the number of updates dropped so."""
        if not destinations:
            return 0
        prefix = f"device {user_id} "
        dropped = 0
        async with self._db.write() as conn:
            await self._ensure_destinations(conn, destinations)
            for destination in sorted(destinations):
                await self._insert_edu(
                    conn,
                    destination,
                    edu_type,
                    content_json,
                    prefix + device_id,
                    queued_ts,
                )
                of_user = (
                    federation_outbound_edus.c.destination == destination,
                    federation_outbound_edus.c.coalesce_key.like(
                        _like_literal(prefix) + "%", escape="/"
                    ),
                )
                ids = (
                    await conn.execute(
                        sa.select(federation_outbound_edus.c.id)
                        .where(*of_user)
                        .order_by(federation_outbound_edus.c.id.desc())
                    )
                ).scalars()
                newest, *older = [int(i) for i in ids]
                if len(older) < keep:
                    continue
                await conn.execute(
                    sa.delete(federation_outbound_edus).where(
                        *of_user, federation_outbound_edus.c.id != newest
                    )
                )
                await conn.execute(
                    sa.update(federation_outbound_edus)
                    .where(federation_outbound_edus.c.id == newest)
                    .values(content_json=marker_json)
                )
                dropped += len(older)
        return dropped

    async def get_device_lists_sent(
        self, destination: str, user_ids: Collection[str]
    ) -> dict[str, int]:
        """The stream ID of the last device list update about each user that
        ``destination`` was sent (the next one's ``prev_id``)."""
        if not user_ids:
            return {}
        query = sa.select(
            federation_device_list_sent.c.user_id, federation_device_list_sent.c.stream_id
        ).where(
            federation_device_list_sent.c.destination == destination,
            federation_device_list_sent.c.user_id.in_(list(user_ids)),
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {r.user_id: int(r.stream_id) for r in rows}

    async def queue_edus(
        self, edus: Sequence[tuple[str, str, str, str | None]], queued_ts: int
    ) -> None:
        """Queue EDUs given as (destination, type, content JSON, coalesce key), together."""
        if not edus:
            return
        async with self._db.write() as conn:
            await self._ensure_destinations(conn, {e[0] for e in edus})
            for destination, edu_type, content_json, key in edus:
                await self._insert_edu(conn, destination, edu_type, content_json, key, queued_ts)

    async def _insert_edu(
        self,
        conn: Connection,
        destination: str,
        edu_type: str,
        content_json: str,
        coalesce_key: str | None,
        queued_ts: int,
    ) -> None:
        if coalesce_key is not None:
            await conn.execute(
                sa.delete(federation_outbound_edus).where(
                    federation_outbound_edus.c.destination == destination,
                    federation_outbound_edus.c.coalesce_key == coalesce_key,
                )
            )
        await conn.execute(
            sa.insert(federation_outbound_edus).values(
                destination=destination,
                edu_type=edu_type,
                content_json=content_json,
                coalesce_key=coalesce_key,
                queued_ts=queued_ts,
            )
        )

    async def _ensure_destinations(self, conn: Connection, destinations: Iterable[str]) -> None:
        names = sorted(destinations)
        if not names:
            return
        insert = self._db.insert_ignore_statement(federation_destinations, ("destination",), _NEW)
        await conn.execute(
            insert,
            [
                {
                    "destination": d,
                    "retry_interval_ms": 0,
                    "retry_at_ts": 0,
                    "next_txn_id": 1,
                    "catching_up": False,
                }
                for d in names
            ],
        )

    # --- sending -------------------------------------------------------------------------

    async def due_destinations(self, now_ms: int, limit: int) -> list[str]:
        """Destinations with something queued whose back-off is over."""
        async with self._db.read() as conn:
            rows = (await conn.execute(_DUE, {"now_ms": now_ms, "limit": limit})).all()
        return [r.destination for r in rows]

    async def next_retry_ts(self, now_ms: int) -> int | None:
        """The earliest retry time after ``now_ms`` of a destination that has something
        queued and waits."""
        async with self._db.read() as conn:
            found = (await conn.execute(_NEXT_RETRY, {"now_ms": now_ms})).scalar_one_or_none()
        return None if found is None else int(found)

    async def get_destination(self, destination: str) -> Destination | None:
        query = sa.select(federation_destinations).where(
            federation_destinations.c.destination == destination
        )
        async with self._db.read() as conn:
            r = (await conn.execute(query)).first()
        return _destination(r) if r is not None else None

    async def get_batch(
        self, destination: str, max_pdus: int, max_edus: int
    ) -> tuple[list[QueuedPdu], list[QueuedEdu]]:
        """The oldest queued PDUs and EDUs of a destination."""
        pdus_q = (
            sa.select(
                federation_outbound_pdus.c.stream_ordering,
                federation_outbound_pdus.c.room_id,
                federation_outbound_pdus.c.event_id,
            )
            .where(federation_outbound_pdus.c.destination == destination)
            .order_by(federation_outbound_pdus.c.stream_ordering)
            .limit(max_pdus)
        )
        edus_q = (
            sa.select(
                federation_outbound_edus.c.id,
                federation_outbound_edus.c.edu_type,
                federation_outbound_edus.c.content_json,
                federation_outbound_edus.c.queued_ts,
            )
            .where(federation_outbound_edus.c.destination == destination)
            .order_by(federation_outbound_edus.c.id)
            .limit(max_edus)
        )
        async with self._db.read() as conn:
            pdus = (await conn.execute(pdus_q)).all()
            edus = (await conn.execute(edus_q)).all()
        return (
            [QueuedPdu(int(r.stream_ordering), r.room_id, r.event_id) for r in pdus],
            [QueuedEdu(int(r.id), r.edu_type, r.content_json, int(r.queued_ts)) for r in edus],
        )

    async def count_pdus(self, destination: str) -> int:
        query = sa.select(sa.func.count()).where(
            federation_outbound_pdus.c.destination == destination
        )
        async with self._db.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def catch_up(self, destination: str) -> int:
        """Keep only the newest queued PDU of each room for ``destination`` (spec: after an
        outage the destination fetches the rest with /get_missing_events); the number
        dropped."""
        newest = (
            sa.select(sa.func.max(federation_outbound_pdus.c.stream_ordering))
            .where(federation_outbound_pdus.c.destination == destination)
            .group_by(federation_outbound_pdus.c.room_id)
            .scalar_subquery()
        )
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.delete(federation_outbound_pdus).where(
                    federation_outbound_pdus.c.destination == destination,
                    federation_outbound_pdus.c.stream_ordering.not_in(newest),
                )
            )
            return int(result.rowcount or 0)

    async def take_txn_id(self, destination: str) -> int:
        """A transaction number for ``destination``, never handed out again."""
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(federation_destinations)
                .where(federation_destinations.c.destination == destination)
                .values(next_txn_id=federation_destinations.c.next_txn_id + 1)
                .returning(federation_destinations.c.next_txn_id)
            )
            return int(result.scalar_one()) - 1

    async def remove_sent(
        self,
        destination: str,
        stream_orderings: Sequence[int],
        edu_ids: Sequence[int],
        *,
        succeeded: bool,
        device_lists: Mapping[str, int] | None = None,
    ) -> None:
        """Take a transaction's PDUs and EDUs off the queue; ``succeeded``: the destination
        answered, so its back-off ends. ``device_lists``: the stream ID of the last device
        list update about each user the transaction carried."""
        async with self._db.write() as conn:
            for user_id, stream_id in sorted((device_lists or {}).items()):
                await conn.execute(
                    self._db.upsert(
                        federation_device_list_sent,
                        {"destination": destination, "user_id": user_id, "stream_id": stream_id},
                        keys=("destination", "user_id"),
                    )
                )
            if stream_orderings:
                await conn.execute(
                    sa.delete(federation_outbound_pdus).where(
                        federation_outbound_pdus.c.destination == destination,
                        federation_outbound_pdus.c.stream_ordering.in_(list(stream_orderings)),
                    )
                )
            if edu_ids:
                await conn.execute(
                    sa.delete(federation_outbound_edus).where(
                        federation_outbound_edus.c.id.in_(list(edu_ids))
                    )
                )
            if succeeded:
                await conn.execute(
                    sa.update(federation_destinations)
                    .where(federation_destinations.c.destination == destination)
                    .values(retry_interval_ms=0, retry_at_ts=0, catching_up=False)
                )

    async def backed_off(self, destination: str, interval_ms: int, retry_at_ts: int) -> None:
        """The destination failed: not tried again before ``retry_at_ts``, and caught up
        (newest event per room) when it is."""
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(federation_destinations)
                .where(federation_destinations.c.destination == destination)
                .values(retry_interval_ms=interval_ms, retry_at_ts=retry_at_ts, catching_up=True)
            )
