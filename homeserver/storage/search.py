"""Full-text search of room events (POST /search): the index reads of both databases.

PostgreSQL matches the expression index of migration 0019 (``ix_events_search``); SQLite
the FTS5 table ``event_search`` its triggers keep. Both give hits in the same order:
"rank" (best first, then newest) or "recent" (newest first), from a keyset position, so
that the service can read on until it has a page of events the user may see.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import events
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
    """Where the previous page ended: its last hit's rank (rank order) and position."""

    stream_ordering: int
    rank: float | None = None


class SearchStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _conditions(self, criteria: SearchCriteria) -> list[sa.ColumnElement[bool]]:
        where = [
            events.c.room_id.in_(list(criteria.room_ids)),
            events.c.type.in_(list(criteria.types)),
            events.c.redacted_by.is_(None),
            events.c.stream_ordering > 0,  # never an unserved event
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
        """Up to ``limit`` hits after ``after``, in ``order``."""
        if not criteria.room_ids or not criteria.types:
            return []
        source, rank, match, so = self._matches(criteria)
        where = [*self._conditions(criteria), match]
        if after is not None:
            if order == "rank" and after.rank is not None:
                where.append(
                    sa.or_(
                        rank < after.rank, sa.and_(rank == after.rank, so < after.stream_ordering)
                    )
                )
            else:
                where.append(so < after.stream_ordering)
        ordering = (rank.desc(), so.desc()) if order == "rank" else (so.desc(),)
        query = (
            sa.select(
                events.c.stream_ordering, events.c.event_id, events.c.room_id, rank.label("rank")
            )
            .select_from(source)
            .where(*where)
            .order_by(*ordering)
            .limit(limit)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            SearchHit(int(r.stream_ordering), r.event_id, r.room_id, float(r.rank)) for r in rows
        ]

    async def count(self, criteria: SearchCriteria) -> int:
        """How many events match, before history visibility (the spec's approximate count)."""
        if not criteria.room_ids or not criteria.types:
            return 0
        source, _, match, _ = self._matches(criteria)
        query = (
            sa.select(sa.func.count()).select_from(source).where(*self._conditions(criteria), match)
        )
        async with self._db.read() as conn:
            return int((await conn.execute(query)).scalar_one())
