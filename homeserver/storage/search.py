"""Full-text search of room events (POST /search): the index reads of both databases.

PostgreSQL matches the expression index of migration 0019 (``ix_events_search``); SQLite
the FTS5 table ``event_search`` its triggers keep. Both give hits in the same order:
"rank" (best first, then newest) or "recent" (newest first), from a keyset position, so
that the service can read on until it has a page of events the user may see.

SQLite's FTS5 table is written in batches (migration 0027), not by a trigger in each event's
transaction: ``index_pending`` adds the events stored since it last ran, from the background
job (``homeserver/search/indexer.py``) and before each search, so a search still finds every
event stored before it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import BACKFILL_BASE, events
from homeserver.storage.schema.search import EVENT_SEARCH

# The type whose content key each search key names (spec, POST /search ``keys``).
SEARCH_KEYS = {
    "content.body": "m.room.message",
    "content.name": "m.room.name",
    "content.topic": "m.room.topic",
}
Order = Literal["rank", "recent"]

# Exactly the expression of ix_events_search (migration 0019): any difference and
# PostgreSQL reads every event of the rooms instead of the index.
PG_VECTOR: sa.ColumnClause[Any] = sa.literal_column(
    "to_tsvector('english'::regconfig, CASE type"
    " WHEN 'm.room.message' THEN (json::jsonb -> 'content' ->> 'body')"
    " WHEN 'm.room.name' THEN (json::jsonb -> 'content' ->> 'name')"
    " WHEN 'm.room.topic' THEN (json::jsonb -> 'content' ->> 'topic')"
    " END)"
)
_ENGLISH: sa.ColumnClause[Any] = sa.literal_column("'english'::regconfig")
_fts = sa.table(EVENT_SEARCH, sa.column("rowid", sa.Integer), sa.column(EVENT_SEARCH))
# Words as both databases' tokenizers see them (letters and digits, any script).
_WORD = re.compile(r"\w+")
MAX_WORDS = 16  # a longer term is cut: each word is one more condition on the index

# SQLite: the searchable text of the events in (after, upto], as migration 0019's trigger
# took it: not redacted, text values only. The ranges asked for hold served events only (on
# the events stream, or backfilled below it).
_SQLITE_TEXT = (
    "CASE type"
    " WHEN 'm.room.message' THEN json_extract(json, '$.content.body')"
    " WHEN 'm.room.name' THEN json_extract(json, '$.content.name')"
    " WHEN 'm.room.topic' THEN json_extract(json, '$.content.topic')"
    " END"
)
_INDEX_NEW = sa.text(
    f"INSERT INTO {EVENT_SEARCH} (rowid, value)"
    f" SELECT stream_ordering, v FROM (SELECT stream_ordering, {_SQLITE_TEXT} AS v"
    " FROM events WHERE stream_ordering > :after AND stream_ordering <= :upto"
    " AND type IN ('m.room.message', 'm.room.name', 'm.room.topic')"
    " AND redacted_by IS NULL) WHERE typeof(v) = 'text'"
)
_LAST_INDEXED = sa.text(f"SELECT coalesce(max(rowid), 0) FROM {EVENT_SEARCH} WHERE rowid > 0")
# Backfilled events (numbered downwards from BACKFILL_BASE) are indexed from the newest
# fetched downwards: everything below the lowest indexed one down to the oldest stored.
_OLDEST_INDEXED = sa.text(
    f"SELECT coalesce(min(rowid), {BACKFILL_BASE + 1}) FROM {EVENT_SEARCH}"
    f" WHERE rowid <= {BACKFILL_BASE}"
)
# The newest event of the stream and the oldest backfilled one (BACKFILL_BASE + 1: none), each
# its own subquery so that SQLite reads both ends of the index instead of scanning it.
_ENDS = sa.text(
    "SELECT (SELECT coalesce(max(stream_ordering), 0) FROM events),"
    f" (SELECT coalesce(min(stream_ordering), {BACKFILL_BASE + 1}) FROM events"
    f" WHERE stream_ordering <= {BACKFILL_BASE})"
)


def search_words(term: str) -> list[str]:
    """The words of a search term, lower-cased, first occurrence each, at most MAX_WORDS."""
    words = dict.fromkeys(w.lower() for w in _WORD.findall(term))
    return list(words)[:MAX_WORDS]


@dataclass(frozen=True, slots=True)
class SearchHit:
    stream_ordering: int
    event_id: str
    room_id: str
    rank: float
    origin_server_ts: int = 0
    depth: int = 0


@dataclass(frozen=True, slots=True)
class SearchCriteria:
    """Where and what to look for; ``words`` from ``search_words`` (never empty)."""

    words: Sequence[str]
    room_ids: Sequence[str]
    types: Sequence[str]
    senders: Sequence[str] | None = None
    not_senders: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class SearchPosition:
    """Where the previous page ended: its last hit's rank (rank order) and position, and
    for a backfilled hit in the recent order, its timestamp and depth."""

    stream_ordering: int
    rank: float | None = None
    origin_server_ts: int | None = None
    depth: int | None = None


class SearchStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # SQLite: the events up to this stream position, and the backfilled ones down to this
        # position, are indexed (None: not read yet).
        self._indexed: tuple[int, int] | None = None
        self._indexing = asyncio.Lock()

    async def index_pending(self) -> int:
        """SQLite: indexes the events stored since the last call, in one transaction; how
        many were indexed. Nothing to do on PostgreSQL (its index is kept by each insert).

        SQLite has one writer, so the events below the newest one are all committed, and a
        redaction or a deletion cannot come between the read and the insert (their triggers
        take out what is indexed). The same holds at the other end for backfilled events,
        whose positions only go down."""
        if not self._db.is_sqlite:
            return 0
        async with self._indexing:
            if self._indexed is not None:
                async with self._db.read() as conn:
                    newest, oldest = (await conn.execute(_ENDS)).one()
                if newest <= self._indexed[0] and oldest >= self._indexed[1]:
                    return 0
            async with self._db.write() as conn:
                if self._indexed is None:
                    above = int((await conn.execute(_LAST_INDEXED)).scalar_one())
                    below = int((await conn.execute(_OLDEST_INDEXED)).scalar_one())
                else:
                    above, below = self._indexed
                newest, oldest = (await conn.execute(_ENDS)).one()
                added = 0
                if newest > above:
                    result = await conn.execute(_INDEX_NEW, {"after": above, "upto": newest})
                    added += int(result.rowcount or 0)
                if oldest < below:
                    result = await conn.execute(
                        _INDEX_NEW, {"after": oldest - 1, "upto": below - 1}
                    )
                    added += int(result.rowcount or 0)
            self._indexed = (int(newest), int(oldest))  # committed
            return added

    def _conditions(self, criteria: SearchCriteria) -> list[sa.ColumnElement[bool]]:
        where = [
            events.c.room_id.in_(list(criteria.room_ids)),
            events.c.type.in_(list(criteria.types)),
            events.c.redacted_by.is_(None),
            # Served events only: on the events stream, or backfilled below it.
            sa.or_(events.c.stream_ordering > 0, events.c.stream_ordering <= BACKFILL_BASE),
        ]
        if criteria.senders is not None:
            where.append(events.c.sender.in_(list(criteria.senders)))
        if criteria.not_senders:
            where.append(events.c.sender.not_in(list(criteria.not_senders)))
        return where

    def _matches(
        self, criteria: SearchCriteria
    ) -> tuple[Any, sa.ColumnElement[Any], sa.ColumnElement[bool], sa.ColumnElement[Any]]:
        """The FROM, the rank (higher is closer), the match condition and the column of the
        events' order, per database."""
        if self._db.is_sqlite:
            # Each word a prefix, all of them required; quoted, so nothing in a word is
            # FTS5 syntax. bm25 is lower for a closer match. The FTS5 table drives the join
            # and gives the newest first by its rowid (the stream ordering) without ranking
            # every match; only the rank order computes bm25 for all of them.
            query = " AND ".join(f'"{w}"*' for w in criteria.words)
            source = _fts.join(events, _fts.c.rowid == events.c.stream_ordering)
            rank: sa.ColumnElement[Any] = -sa.func.bm25(sa.literal_column(EVENT_SEARCH))
            matches: sa.ColumnElement[bool] = sa.literal_column(EVENT_SEARCH).op("MATCH")(
                sa.literal(query)
            )
            return source, rank, matches, _fts.c.rowid
        # Each word a prefix, all of them required (\w+ words hold no tsquery syntax).
        tsquery = sa.func.to_tsquery(_ENGLISH, " & ".join(f"{w}:*" for w in criteria.words))
        ts_rank: sa.ColumnElement[Any] = sa.func.ts_rank(PG_VECTOR, tsquery)
        match = PG_VECTOR.op("@@")(tsquery)
        return events, ts_rank, match, events.c.stream_ordering

    async def search(
        self,
        criteria: SearchCriteria,
        order: Order,
        after: SearchPosition | None,
        limit: int,
    ) -> list[SearchHit]:
        """Up to ``limit`` hits after ``after``, in ``order``.

        "recent": the events of the events stream newest first, then the backfilled ones
        (older history, whose positions count downwards in the order they were fetched, not
        in the room's order) by timestamp, then depth, newest first."""
        if not criteria.room_ids or not criteria.types:
            return []
        await self.index_pending()
        source, rank, match, so = self._matches(criteria)
        where = [*self._conditions(criteria), match]
        if order == "rank":
            if after is not None and after.rank is not None:
                where.append(
                    sa.or_(
                        rank < after.rank, sa.and_(rank == after.rank, so < after.stream_ordering)
                    )
                )
            return await self._read(source, rank, where, (rank.desc(), so.desc()), limit)
        hits: list[SearchHit] = []
        backfilled_after: SearchPosition | None = after
        if after is None or after.stream_ordering > 0:
            live = [*where, so > 0]
            if after is not None:
                live.append(so < after.stream_ordering)
            hits = await self._read(source, rank, live, (so.desc(),), limit)
            if len(hits) == limit:
                return hits
            backfilled_after = None
        keys = (events.c.origin_server_ts, events.c.depth, events.c.stream_ordering)
        old = [*where, events.c.stream_ordering <= BACKFILL_BASE]
        if backfilled_after is not None:
            old.append(
                sa.tuple_(*keys)
                < sa.tuple_(
                    sa.literal(backfilled_after.origin_server_ts or 0),
                    sa.literal(backfilled_after.depth or 0),
                    sa.literal(backfilled_after.stream_ordering),
                )
            )
        return hits + await self._read(
            source, rank, old, tuple(k.desc() for k in keys), limit - len(hits)
        )

    async def _read(
        self,
        source: Any,
        rank: sa.ColumnElement[Any],
        where: list[sa.ColumnElement[bool]],
        ordering: tuple[sa.ColumnElement[Any], ...],
        limit: int,
    ) -> list[SearchHit]:
        query = (
            sa.select(
                events.c.stream_ordering,
                events.c.event_id,
                events.c.room_id,
                events.c.origin_server_ts,
                events.c.depth,
                rank.label("rank"),
            )
            .select_from(source)
            .where(*where)
            .order_by(*ordering)
            .limit(limit)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            SearchHit(
                int(r.stream_ordering),
                r.event_id,
                r.room_id,
                float(r.rank),
                int(r.origin_server_ts),
                int(r.depth),
            )
            for r in rows
        ]

    async def count(self, criteria: SearchCriteria) -> int:
        """How many events match, before history visibility (the spec's approximate count)."""
        if not criteria.room_ids or not criteria.types:
            return 0
        await self.index_pending()
        source, _, match, _ = self._matches(criteria)
        query = (
            sa.select(sa.func.count()).select_from(source).where(*self._conditions(criteria), match)
        )
        async with self._db.read() as conn:
            return int((await conn.execute(query)).scalar_one())
