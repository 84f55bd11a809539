"""Account data, global and per room, and room tags: each write is an account-data position."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.storage.database import Database
from homeserver.storage.schema import account_data, room_tags

GLOBAL = ""  # the room_id of global account data


@dataclass(frozen=True, slots=True)
class AccountData:
    room_id: str | None  # None for global account data
    type: str
    content: JsonDict
    stream_position: int


class AccountDataStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(
        self, user_id: str, room_id: str | None, data_type: str, content: JsonDict
    ) -> int:
        """Store or replace one item (``room_id`` None: global); returns its position."""
        async with self._db.write() as conn:
            position = await self._db.next_position(conn, Stream.ACCOUNT_DATA)
            row = {
                "user_id": user_id,
                "room_id": room_id or GLOBAL,
                "type": data_type,
                "content": content,
                "stream_position": position,
            }
            await conn.execute(
                self._db.upsert(account_data, row, keys=("user_id", "room_id", "type"))
            )
        return position

    async def get(self, user_id: str, room_id: str | None, data_type: str) -> JsonDict | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(account_data.c.content).where(
                        account_data.c.user_id == user_id,
                        account_data.c.room_id == (room_id or GLOBAL),
                        account_data.c.type == data_type,
                    )
                )
            ).first()
        if row is None:
            return None
        content: JsonDict = row.content
        return content

    async def get_changed(
        self, user_id: str, *, rooms: bool, after: int | None, upto: int
    ) -> list[AccountData]:
        """Global (``rooms`` False) or all rooms' items written in ``(after, upto]``.

        ``after`` None: every item up to ``upto``. Ordered by position.
        """
        query = sa.select(account_data).where(
            account_data.c.user_id == user_id, account_data.c.stream_position <= upto
        )
        query = query.where(
            account_data.c.room_id != GLOBAL if rooms else account_data.c.room_id == GLOBAL
        )
        if after is not None:
            query = query.where(account_data.c.stream_position > after)
        async with self._db.read() as conn:
            rows = (await conn.execute(query.order_by(account_data.c.stream_position))).all()
        return [
            AccountData(r.room_id or None, r.type, r.content, int(r.stream_position)) for r in rows
        ]

    async def get_global_for_users(
        self, user_ids: Collection[str], data_type: str
    ) -> dict[str, JsonDict]:
        """One global type of several users (those who have it), in one query."""
        if not user_ids:
            return {}
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(account_data.c.user_id, account_data.c.content).where(
                        account_data.c.user_id.in_(list(user_ids)),
                        account_data.c.room_id == GLOBAL,
                        account_data.c.type == data_type,
                    )
                )
            ).all()
        return {r.user_id: r.content for r in rows}

    # --- tags ------------------------------------------------------------------------------

    async def put_room_tag(self, user_id: str, room_id: str, tag: str, content: JsonDict) -> int:
        """Store or replace one tag; returns its account-data stream position."""
        return await self._write_tag(user_id, room_id, tag, content)

    async def delete_room_tag(self, user_id: str, room_id: str, tag: str) -> int:
        """Remove one tag (a tombstone that incremental syncs see); returns its position."""
        return await self._write_tag(user_id, room_id, tag, None)

    async def _write_tag(
        self, user_id: str, room_id: str, tag: str, content: JsonDict | None
    ) -> int:
        async with self._db.write() as conn:
            position = await self._db.next_position(conn, Stream.ACCOUNT_DATA)
            row = {
                "user_id": user_id,
                "room_id": room_id,
                "tag": tag,
                "content": content,
                "stream_position": position,
            }
            await conn.execute(self._db.upsert(room_tags, row, keys=("user_id", "room_id", "tag")))
        return position

    async def get_room_tags(self, user_id: str, room_id: str) -> dict[str, JsonDict]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(room_tags.c.tag, room_tags.c.content).where(
                        room_tags.c.user_id == user_id,
                        room_tags.c.room_id == room_id,
                        room_tags.c.content.is_not(sa.null()),
                    )
                )
            ).all()
        return {r.tag: r.content for r in rows if r.content is not None}

    async def get_tag_names(self, user_id: str) -> dict[str, frozenset[str]]:
        """Each room the user tagged -> the names of its current tags."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(room_tags.c.room_id, room_tags.c.tag, room_tags.c.content).where(
                        room_tags.c.user_id == user_id
                    )
                )
            ).all()
        out: dict[str, set[str]] = {}
        for r in rows:
            if r.content is not None:  # a deleted tag (stored as JSON null)
                out.setdefault(r.room_id, set()).add(r.tag)
        return {room_id: frozenset(tags) for room_id, tags in out.items()}

    async def get_tags_changed(
        self, user_id: str, room_ids: Collection[str], *, after: int | None, upto: int
    ) -> dict[str, dict[str, JsonDict]]:
        """The current tags of each room in ``room_ids`` whose tags changed in ``(after, upto]``.

        ``after`` None: every room that has tags. A room whose last tag went is ``{}``.
        """
        wanted = set(room_ids)
        async with self._db.read() as conn:
            changed_query = (
                sa.select(room_tags.c.room_id)
                .where(room_tags.c.user_id == user_id, room_tags.c.stream_position <= upto)
                .distinct()
            )
            if after is not None:
                changed_query = changed_query.where(room_tags.c.stream_position > after)
            changed = {r.room_id for r in (await conn.execute(changed_query)).all()} & wanted
            if not changed:
                return {}
            # The whole current set, since m.tag replaces a room's tags on the client; one
            # written after ``upto`` comes again in the next sync, which is harmless.
            rows = (
                await conn.execute(
                    sa.select(room_tags.c.room_id, room_tags.c.tag, room_tags.c.content).where(
                        room_tags.c.user_id == user_id, room_tags.c.room_id.in_(sorted(changed))
                    )
                )
            ).all()
        out: dict[str, dict[str, JsonDict]] = {room_id: {} for room_id in changed}
        for r in rows:
            if r.content is not None:
                out[r.room_id][r.tag] = r.content
        if after is None:
            out = {room_id: tags for room_id, tags in out.items() if tags}
        return out
