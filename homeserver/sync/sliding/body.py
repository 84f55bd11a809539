"""The body of a sliding sync request (MSC4186), parsed strictly: shared by the HTTP
endpoint and the WebSocket transport."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID
from homeserver.sync.sliding.params import (
    Extensions,
    ListFilters,
    ListParams,
    RequiredState,
    RoomParams,
    ScopedExtension,
    SlidingSyncRequest,
    ThreadSubscriptionsParams,
    ToDeviceParams,
)


class RequestBody(BaseModel):
    """As ``homeserver.web.RequestBody`` (strict), without the web layer."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


UNSTABLE_FEATURE = "org.matrix.simplified_msc3575"

# Bounds on what one request may ask for (Synapse has the same orders of magnitude): they
# keep the work of a request, and the connection state it leaves, in proportion.
MAX_LISTS = 100
MAX_KEY_BYTES = 64  # list names and conn_id
MAX_RANGES = 100
MAX_TIMELINE_LIMIT = 1000
MAX_REQUIRED_STATE = 1000
MAX_SUBSCRIPTIONS = 1000
MAX_SCOPE = 1000
MAX_TO_DEVICE_LIMIT = 1000
MAX_THREAD_SUBSCRIPTIONS_LIMIT = 1000
MAX_NAME_LIKE = 1000  # characters of room_name_like

StatePair = Annotated[tuple[StrictStr, StrictStr], Field(strict=False)]
Range = Annotated[
    tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]], Field(strict=False)
]


def _short(value: str) -> str:
    if len(value.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"at most {MAX_KEY_BYTES} bytes")
    return value


class RoomParamsBody(RequestBody):
    timeline_limit: int = Field(default=0, ge=0, le=MAX_TIMELINE_LIMIT)
    required_state: list[StatePair] = Field(default=[], max_length=MAX_REQUIRED_STATE)

    def params(self) -> RoomParams:
        return RoomParams(self.timeline_limit, RequiredState.of(self.required_state))


class FiltersBody(RequestBody):
    is_dm: StrictBool | None = None
    is_invite: StrictBool | None = None
    is_encrypted: StrictBool | None = None
    room_types: list[StrictStr | None] | None = Field(default=None, max_length=MAX_SCOPE)
    not_room_types: list[StrictStr | None] | None = Field(default=None, max_length=MAX_SCOPE)
    spaces: list[StrictStr] | None = Field(default=None, max_length=MAX_SCOPE)
    tags: list[StrictStr] | None = Field(default=None, max_length=MAX_SCOPE)
    not_tags: list[StrictStr] | None = Field(default=None, max_length=MAX_SCOPE)
    room_name_like: StrictStr | None = Field(default=None, max_length=MAX_NAME_LIKE)


class ListBody(RoomParamsBody):
    ranges: list[Range] | None = Field(default=None, max_length=MAX_RANGES)
    filters: FiltersBody | None = None

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        for start, end in ranges or ():
            if start > end:
                raise ValueError("a range's start is after its end")
        return ranges

    def list_params(self) -> ListParams:
        f = self.filters or FiltersBody()
        return ListParams(
            self.params(),
            tuple(self.ranges) if self.ranges is not None else None,
            ListFilters(
                is_dm=f.is_dm,
                is_invite=f.is_invite,
                is_encrypted=f.is_encrypted,
                room_types=frozenset(f.room_types) if f.room_types is not None else None,
                not_room_types=(
                    frozenset(f.not_room_types) if f.not_room_types is not None else None
                ),
                spaces=frozenset(f.spaces) if f.spaces is not None else None,
                tags=frozenset(f.tags) if f.tags is not None else None,
                not_tags=frozenset(f.not_tags) if f.not_tags is not None else None,
                room_name_like=f.room_name_like,
            ),
        )


class ExtensionBody(RequestBody):
    enabled: StrictBool | None = False


class ScopedExtensionBody(ExtensionBody):
    lists: list[StrictStr] | None = Field(default=None, max_length=MAX_SCOPE)
    rooms: list[StrictStr] | None = Field(default=None, max_length=MAX_SCOPE)

    def scope(self) -> ScopedExtension | None:
        if not self.enabled:
            return None
        default = ScopedExtension()
        return ScopedExtension(
            frozenset(self.lists) if self.lists is not None else default.lists,
            frozenset(self.rooms) if self.rooms is not None else default.rooms,
        )


class ToDeviceBody(ExtensionBody):
    limit: int = Field(default=100, ge=1, le=MAX_TO_DEVICE_LIMIT)
    since: StrictStr | None = None

    @field_validator("since")
    @classmethod
    def _position(cls, value: str | None) -> str | None:
        if value is not None and not (value.isascii() and value.isdigit() and len(value) < 19):
            raise ValueError("must be a next_batch of this extension")
        return value


class ThreadSubscriptionsBody(ExtensionBody):
    limit: int = Field(default=100, ge=1, le=MAX_THREAD_SUBSCRIPTIONS_LIMIT)


class ExtensionsBody(RequestBody):
    to_device: ToDeviceBody | None = None
    e2ee: ExtensionBody | None = None
    account_data: ScopedExtensionBody | None = None
    receipts: ScopedExtensionBody | None = None
    typing: ScopedExtensionBody | None = None
    thread_subscriptions: ThreadSubscriptionsBody | None = None

    def extensions(self) -> Extensions:
        td = self.to_device
        return Extensions(
            to_device=(
                ToDeviceParams(td.limit, int(td.since) if td.since is not None else None)
                if td is not None and td.enabled
                else None
            ),
            e2ee=bool(self.e2ee and self.e2ee.enabled),
            account_data=self.account_data.scope() if self.account_data else None,
            receipts=self.receipts.scope() if self.receipts else None,
            typing=self.typing.scope() if self.typing else None,
            thread_subscriptions=(
                ThreadSubscriptionsParams(self.thread_subscriptions.limit)
                if self.thread_subscriptions is not None and self.thread_subscriptions.enabled
                else None
            ),
        )


class SlidingSyncBody(RequestBody):
    conn_id: StrictStr = ""
    lists: dict[StrictStr, ListBody] = Field(default={}, max_length=MAX_LISTS)
    room_subscriptions: dict[StrictStr, RoomParamsBody] = Field(
        default={}, max_length=MAX_SUBSCRIPTIONS
    )
    extensions: ExtensionsBody = ExtensionsBody()

    @field_validator("conn_id")
    @classmethod
    def _conn_id(cls, value: str) -> str:
        return _short(value)

    @field_validator("lists")
    @classmethod
    def _list_names(cls, lists: dict[str, ListBody]) -> dict[str, ListBody]:
        for name in lists:
            _short(name)
        return lists

    def request(self) -> SlidingSyncRequest:
        for room_id in self.room_subscriptions:
            RoomID.parse(room_id)  # M_INVALID_PARAM
        return SlidingSyncRequest(
            conn_id=self.conn_id,
            lists={name: body.list_params() for name, body in self.lists.items()},
            room_subscriptions={
                room_id: body.params() for room_id, body in self.room_subscriptions.items()
            },
            extensions=self.extensions.extensions(),
        )


def parse_request(data: dict[str, Any], where: str = "") -> SlidingSyncRequest:
    """The request, or the error an HTTP body gets: ``M_MISSING_PARAM`` or ``M_BAD_JSON``
    naming the field, ``M_INVALID_PARAM`` for a bad room ID."""
    try:
        body = SlidingSyncBody.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        path = ".".join([*([where] if where else []), *(str(p) for p in first["loc"])])
        if first["type"] == "missing":
            raise MatrixError(Codes.MISSING_PARAM, f"Missing parameter: {path}") from e
        raise MatrixError(
            Codes.BAD_JSON, f"Invalid parameter {path or 'body'}: {first['msg']}"
        ) from e
    return body.request()
