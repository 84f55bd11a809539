"""Rooms that live on other servers, as far as our users' memberships of them go: an invite
of one of our users into another server's room, before this server is in the room."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.core import jsonutil
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.storage.database import Database
from homeserver.storage.events.incoming import NO_STATE_GROUP
from homeserver.storage.schema import events, room_memberships, rooms


class RemoteRoomWrites:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def store_remote_membership(
        self,
        room_id: str,
        room_version: str,
        event_id: str,
        pdu: JsonDict,
        unsigned: JsonDict,
        received_ts: int,
    ) -> int | None:
        """Record a membership of one of our users in a room of another server that this
        server is not in (an invite, with the room's stripped state in ``unsigned``
        ``invite_room_state``; the leave that declines it): the room (by its version,
        without state), the event served at a new position of the events stream (so the
        user's sync sees it, as an outlier: no place in the graph), and the user's
        membership. None when the event was recorded before."""
        state_key = pdu["state_key"]
        async with self._db.write() as conn:
            known = (
                await conn.execute(
                    sa.select(events.c.event_id).where(events.c.event_id == event_id)
                )
            ).first()
            if known is not None:
                return None
            await conn.execute(
                self._db.insert_ignore(
                    rooms,
                    {
                        "room_id": room_id,
                        "room_version": room_version,
                        "creator": pdu["sender"],
                        "created_ts": received_ts,
                        "is_public": False,
                        "current_depth": 0,
                    },
                    keys=("room_id",),
                )
            )
            position = await self._db.next_position(conn, Stream.EVENTS)
            await conn.execute(
                sa.insert(events).values(
                    stream_ordering=position,
                    event_id=event_id,
                    room_id=room_id,
                    type=pdu["type"],
                    state_key=state_key,
                    sender=pdu["sender"],
                    depth=pdu["depth"],
                    origin_server_ts=pdu["origin_server_ts"],
                    json=jsonutil.dumps_str(pdu),
                    unsigned_json=jsonutil.dumps_str(unsigned) if unsigned else None,
                    state_group=NO_STATE_GROUP,
                    outlier=True,
                )
            )
            content = pdu.get("content", {})
            displayname = content.get("displayname")
            avatar_url = content.get("avatar_url")
            await conn.execute(
                self._db.upsert(
                    room_memberships,
                    {
                        "room_id": room_id,
                        "user_id": state_key,
                        "membership": pdu["content"]["membership"],
                        "event_id": event_id,
                        "sender": pdu["sender"],
                        "stream_ordering": position,
                        "forgotten": False,
                        "displayname": displayname if isinstance(displayname, str) else None,
                        "avatar_url": avatar_url if isinstance(avatar_url, str) else None,
                    },
                    keys=("room_id", "user_id"),
                )
            )
        return position
