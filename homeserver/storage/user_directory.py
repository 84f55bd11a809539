"""The user directory: users a searcher may see, matched by user ID and display name.

Read straight from memberships, profiles and current state; no tables of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.core import jsonutil
from homeserver.storage.database import Connection, Database
from homeserver.storage.schema import current_state, events, profiles, room_memberships

JOIN_RULES = "m.room.join_rules"
HISTORY_VISIBILITY = "m.room.history_visibility"


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    user_id: str
    display_name: str | None
    avatar_url: str | None


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(self, searcher: str, words: Sequence[str], limit: int) -> list[DirectoryUser]:
        """Users joined to a room the searcher is joined to, or to a public or world-readable
        room, whose user ID or display name contains every one of ``words`` (lower case).

        Prefix matches of the first word rank first, then users with a profile, then by ID.
        """
        rm = room_memberships
        mine = room_memberships.alias("mine")
        async with self._db.read() as conn:
            public = await self._open_rooms(conn)
            shared = sa.select(mine.c.room_id).where(
                mine.c.user_id == searcher, mine.c.membership == "join"
            )
            user_id = sa.func.lower(rm.c.user_id)
            # A remote user has no profile here; the member event's name stands in for it.
            name = sa.func.lower(sa.func.coalesce(profiles.c.displayname, rm.c.displayname, ""))
            matches = [
                sa.or_(
                    user_id.like(f"%{_escape(w)}%", escape="\\"),
                    name.like(f"%{_escape(w)}%", escape="\\"),
                )
                for w in words
            ]
            first = _escape(words[0])
            prefix = sa.or_(
                user_id.like(f"@{first}%", escape="\\"), name.like(f"{first}%", escape="\\")
            )
            rank = sa.func.min(sa.case((prefix, 0), else_=1))
            has_profile = sa.func.max(
                sa.case(
                    (
                        sa.or_(
                            profiles.c.displayname.is_not(None),
                            profiles.c.avatar_url.is_not(None),
                            rm.c.displayname.is_not(None),
                        ),
                        1,
                    ),
                    else_=0,
                )
            )
            query = (
                sa.select(
                    rm.c.user_id,
                    sa.func.max(profiles.c.displayname).label("profile_name"),
                    sa.func.max(profiles.c.avatar_url).label("profile_avatar"),
                    sa.func.max(rm.c.displayname).label("member_name"),
                    sa.func.max(rm.c.avatar_url).label("member_avatar"),
                    sa.func.max(sa.case((profiles.c.user_id.is_not(None), 1), else_=0)).label(
                        "is_local"
                    ),
                )
                .select_from(rm.outerjoin(profiles, profiles.c.user_id == rm.c.user_id))
                .where(
                    rm.c.membership == "join",
                    sa.or_(rm.c.room_id.in_(shared), rm.c.room_id.in_(sorted(public))),
                    *matches,
                )
                .group_by(rm.c.user_id)
                .order_by(rank, has_profile.desc(), rm.c.user_id)
                .limit(limit)
            )
            rows = (await conn.execute(query)).all()
        out = []
        for r in rows:
            if r.is_local:
                out.append(DirectoryUser(r.user_id, r.profile_name, r.profile_avatar))
            else:
                out.append(DirectoryUser(r.user_id, r.member_name, r.member_avatar))
        return out

    async def _open_rooms(self, conn: Connection) -> set[str]:
        """Rooms with a ``public`` join rule or ``world_readable`` history visibility."""
        # The LIKE is a cheap necessary condition on the stored JSON; parsing decides.
        rows = (
            await conn.execute(
                sa.select(current_state.c.room_id, current_state.c.type, events.c.json)
                .join(events, events.c.event_id == current_state.c.event_id)
                .where(
                    current_state.c.type.in_([JOIN_RULES, HISTORY_VISIBILITY]),
                    current_state.c.state_key == "",
                    sa.or_(
                        events.c.json.like('%"public"%'), events.c.json.like('%"world_readable"%')
                    ),
                )
            )
        ).all()
        rooms: set[str] = set()
        for r in rows:
            content = jsonutil.loads(r.json).get("content")
            if not isinstance(content, dict):
                continue
            if (r.type == JOIN_RULES and content.get("join_rule") == "public") or (
                r.type == HISTORY_VISIBILITY
                and content.get("history_visibility") == "world_readable"
            ):
                rooms.add(r.room_id)
        return rooms


def _escape(word: str) -> str:
    """``word`` as a literal inside a LIKE pattern (escape character ``\\``)."""
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
