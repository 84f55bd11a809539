"""Filters: clients upload them once and name them in /sync and /messages by ID.

A filter is validated against the spec's shape (``Filter`` below) and stored as the client
sent it, so unstable keys a client adds survive the round trip.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.filters import FilterStore

RoomIdStr = Annotated[str, StringConstraints(pattern=r"^!")]
UserIdStr = Annotated[str, StringConstraints(pattern=r"^@")]


class _Model(BaseModel):
    # Strict like request bodies; unknown keys are kept (clients send unstable ones).
    model_config = ConfigDict(strict=True, frozen=True, extra="allow")


class EventFilter(_Model):
    # spec says "greater than 0", but clients ask for ``limit: 0`` to get no timeline at all.
    limit: int | None = Field(default=None, ge=0)
    not_senders: list[UserIdStr] | None = None
    not_types: list[str] | None = None
    senders: list[UserIdStr] | None = None
    types: list[str] | None = None


class RoomEventFilter(EventFilter):
    unread_thread_notifications: bool | None = None
    lazy_load_members: bool | None = None
    include_redundant_members: bool | None = None
    not_rooms: list[RoomIdStr] | None = None
    rooms: list[RoomIdStr] | None = None
    contains_url: bool | None = None


class RoomFilter(_Model):
    not_rooms: list[RoomIdStr] | None = None
    rooms: list[RoomIdStr] | None = None
    ephemeral: RoomEventFilter | None = None
    include_leave: bool | None = None
    state: RoomEventFilter | None = None
    timeline: RoomEventFilter | None = None
    account_data: RoomEventFilter | None = None


class Filter(_Model):
    """spec: definitions/sync_filter.yaml."""

    event_fields: list[str] | None = None
    event_format: Literal["client", "federation"] | None = None
    presence: EventFilter | None = None
    account_data: EventFilter | None = None
    room: RoomFilter | None = None


def validate_filter(data: JsonDict) -> JsonDict:
    """``data`` if it has the shape of a filter; ``M_BAD_JSON`` naming the first bad field.

    Also for filters given inline (``/sync?filter={...}``).
    """
    try:
        Filter.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "filter"
        raise MatrixError(Codes.BAD_JSON, f"Invalid filter at {where}: {first['msg']}") from e
    return data


class FilterService:
    def __init__(self, store: FilterStore) -> None:
        self._store = store

    async def create_filter(
        self, requester: Requester, user_id: UserID, filter_json: JsonDict
    ) -> str:
        if requester.user_id != user_id:
            raise MatrixError(Codes.FORBIDDEN, "Cannot create filters for another user")
        return str(await self._store.add_filter(user_id, validate_filter(filter_json)))

    async def get_filter_for(
        self, requester: Requester, user_id: UserID, filter_id: str
    ) -> JsonDict:
        """spec: GET /user/{userId}/filter/{filterId}: only one's own filters."""
        if requester.user_id != user_id:
            raise MatrixError(Codes.FORBIDDEN, "Cannot read another user's filters")
        return await self.get_filter(user_id, filter_id)

    async def get_filter(self, user_id: UserID, filter_id: str) -> JsonDict:
        """The stored filter; ``M_NOT_FOUND`` (404) for an unknown ID."""
        # IDs are decimal integers; anything else is not one of ours. Bounded so that the
        # integer fits the database column.
        if not filter_id.isascii() or not filter_id.isdigit() or len(filter_id) > 18:
            raise MatrixError(Codes.NOT_FOUND, "Unknown filter")
        found = await self._store.get_filter(user_id, int(filter_id))
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown filter")
        return found
