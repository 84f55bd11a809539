"""What the admin API reads and sets about the server as a whole: reports of content,
registration tokens, server-notice rooms (issue 22)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.registration_tokens import RegistrationToken
from homeserver.storage.schema import (
    content_reports,
    events,
    registration_tokens,
    server_notice_rooms,
)


@dataclass(frozen=True, slots=True)
class Report:
    report_id: int
    reporter: str
    room_id: str | None
    event_id: str | None
    user_id: str | None
    reason: str | None
    created_ts: int
    event_sender: str | None  # of the reported event, while the server still has it


@dataclass(frozen=True, slots=True)
class ReportQuery:
    offset: int
    limit: int
    backwards: bool = True  # newest first, as Synapse
    reporter: str | None = None
    room_id: str | None = None
    event_sender: str | None = None
    target_user_id: str | None = None  # the reported user
    kind: str = "event"  # "event", "room" or "user"


_r = content_reports.c
_KINDS = {
    "event": _r.event_id.is_not(None),
    "room": sa.and_(_r.room_id.is_not(None), _r.event_id.is_(None)),
    "user": _r.user_id.is_not(None),
}


def _report(r: Any) -> Report:
    return Report(
        int(r.id),
        r.reporter,
        r.room_id,
        r.event_id,
        r.user_id,
        r.reason,
        int(r.created_ts),
        r.sender,
    )


def _token(r: Any) -> RegistrationToken:
    return RegistrationToken(r.token, r.uses_allowed, r.pending, r.completed, r.expiry_time)


class AdminServerStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- reports -----------------------------------------------------------------------------

    async def list_reports(self, query: ReportQuery) -> tuple[list[Report], int]:
        where = [_KINDS[query.kind]]
        if query.reporter is not None:
            where.append(_r.reporter == query.reporter)
        if query.room_id is not None:
            where.append(_r.room_id == query.room_id)
        if query.event_sender is not None:
            where.append(events.c.sender == query.event_sender)
        if query.target_user_id is not None:
            where.append(_r.user_id == query.target_user_id)
        joined = content_reports.outerjoin(events, events.c.event_id == _r.event_id)
        order = _r.id.desc() if query.backwards else _r.id.asc()
        select = (
            sa.select(content_reports, events.c.sender)
            .select_from(joined)
            .where(*where)
            .order_by(order)
            .offset(query.offset)
            .limit(query.limit)
        )
        count = sa.select(sa.func.count()).select_from(joined).where(*where)
        async with self._db.read() as conn:
            rows = (await conn.execute(select)).all()
            total = int((await conn.execute(count)).scalar_one())
        return [_report(r) for r in rows], total

    async def get_report(self, report_id: int, kind: str) -> Report | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(content_reports, events.c.sender)
                    .select_from(
                        content_reports.outerjoin(events, events.c.event_id == _r.event_id)
                    )
                    .where(_r.id == report_id, _KINDS[kind])
                )
            ).first()
        return None if r is None else _report(r)

    async def delete_report(self, report_id: int, kind: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.delete(content_reports).where(_r.id == report_id, _KINDS[kind])
            )
        return result.rowcount > 0

    # --- registration tokens -----------------------------------------------------------------

    async def list_tokens(self, valid: bool | None, now_ms: int) -> list[RegistrationToken]:
        t = registration_tokens.c
        usable = sa.and_(
            sa.or_(t.uses_allowed.is_(None), t.pending + t.completed < t.uses_allowed),
            sa.or_(t.expiry_time.is_(None), t.expiry_time > now_ms),
        )
        query = sa.select(registration_tokens).order_by(t.token)
        if valid is True:
            query = query.where(usable)
        elif valid is False:
            query = query.where(sa.not_(usable))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_token(r) for r in rows]

    async def update_token(self, token: str, changes: dict[str, int | None]) -> bool:
        """Set ``uses_allowed`` and/or ``expiry_time``; False if there is no such token."""
        if not changes:
            async with self._db.read() as conn:
                found = (
                    await conn.execute(
                        sa.select(registration_tokens.c.token).where(
                            registration_tokens.c.token == token
                        )
                    )
                ).first()
            return found is not None
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(registration_tokens)
                .where(registration_tokens.c.token == token)
                .values(**changes)
            )
        return result.rowcount > 0

    # --- server notices ----------------------------------------------------------------------

    async def get_notice_room(self, user_id: str) -> str | None:
        async with self._db.read() as conn:
            found = (
                await conn.execute(
                    sa.select(server_notice_rooms.c.room_id).where(
                        server_notice_rooms.c.user_id == user_id
                    )
                )
            ).scalar()
        return None if found is None else str(found)

    async def set_notice_room(self, user_id: str, room_id: str) -> None:
        row = {"user_id": user_id, "room_id": room_id}
        async with self._db.write() as conn:
            await conn.execute(self._db.upsert(server_notice_rooms, row, keys=("user_id",)))
