"""The wire protocol of the WebSocket transport: names, close codes, request parameters.

docs/websocket.md is its description for client authors; this module is its definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from homeserver.core.errors import Codes, MatrixError

# The path, under /_matrix/client; "org.homeserver.ws" is the unstable feature name that
# /versions advertises.
UNSTABLE_FEATURE = "org.homeserver.ws"
PATH = f"/unstable/{UNSTABLE_FEATURE}/v1/sync"
# One SyncService.sync call waits this long for news; an empty answer is not sent, the loop
# just asks again from the same position.
SYNC_WAIT_MS = 30_000
# RFC 6455: a close reason is at most 123 bytes.
MAX_CLOSE_REASON_BYTES = 123


class CloseCode(IntEnum):
    """Why the server closed a connection (4000-4999 are ours, RFC 6455 section 7.4.2)."""

    GOING_AWAY = 1001  # the server is shutting down: reconnect (to it or another worker)
    TOO_LARGE = 1009  # a frame over max_frame_bytes
    INTERNAL_ERROR = 1011  # a bug or the database is down: reconnect with your token
    TRY_AGAIN_LATER = 1013  # no database connection free in time: reconnect after a while
    BAD_REQUEST = 4000  # the sync parameters given at connect are invalid
    UNAUTHORIZED = 4001  # no token, a token in the URL, an unknown or revoked one
    HEARTBEAT_TIMEOUT = 4002  # nothing received for ping_timeout_ms after a ping
    TOO_SLOW = 4008  # the outbox is full: reconnect and resume from your last next_batch


class TransportClosed(Exception):
    """The connection is gone; raised by a ``Transport`` that can no longer send."""


class Transport(Protocol):
    async def receive(self) -> str | bytes | None:
        """The next frame; None once the peer has closed the connection."""

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


# --- request parameters: strict, like HTTP request bodies ---------------------------------


class Params(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


ParamsT = TypeVar("ParamsT", bound=Params)
Presence = Literal["online", "offline", "unavailable"]


class SyncParams(Params):
    since: str | None = None
    filter: str | dict[str, Any] | None = None  # a filter ID or an inline filter
    full_state: bool = False
    set_presence: Presence = "online"


class SlidingParams(Params):
    """Beside the fields of a sliding sync body (MSC4186), parsed as the HTTP body is."""

    pos: str | None = None
    timeout: int | None = Field(default=None, ge=0)


class SendParams(Params):
    room_id: str
    event_type: str
    txn_id: str
    content: dict[str, Any]
    # MSC4140: sent after this many ms unless cancelled; the answer is then {"delay_id"}.
    delay: int | None = Field(default=None, ge=0)


class DelayedEventParams(Params):
    """MSC4140: an action on one of the user's delayed events."""

    delay_id: str
    action: Literal["cancel", "restart", "send"]


class TypingParams(Params):
    room_id: str
    typing: bool
    timeout: int | None = Field(default=None, ge=0)  # ms; optional when typing is false


class ReceiptParams(Params):
    room_id: str
    receipt_type: str
    event_id: str
    thread_id: str | None = None  # absent: an unthreaded receipt


class PresenceParams(Params):
    presence: Presence
    status_msg: str | None = None


class Request(Params):
    id: str
    method: str
    params: dict[str, Any] = {}


def validate(data: Mapping[str, Any], model: type[ParamsT], where: str = "params") -> ParamsT:
    """The same errors as an HTTP body: ``M_MISSING_PARAM`` or ``M_BAD_JSON`` with its path."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        path = ".".join([where, *(str(p) for p in first["loc"])])
        if first["type"] == "missing":
            raise MatrixError(Codes.MISSING_PARAM, f"Missing parameter: {path}") from e
        raise MatrixError(Codes.BAD_JSON, f"Invalid parameter {path}: {first['msg']}") from e


def sync_params_from_query(query: Mapping[str, str]) -> SyncParams:
    """The connect URL's query takes /sync's parameters (``timeout`` is meaningless here)."""
    full_state = query.get("full_state", "false")
    if full_state not in ("true", "false"):
        raise MatrixError(Codes.INVALID_PARAM, "full_state must be true or false")
    data: dict[str, Any] = {"full_state": full_state == "true"}
    for key in ("since", "filter", "set_presence"):
        if query.get(key):
            data[key] = query[key]
    return validate(data, SyncParams, "query")


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MatrixError(Codes.MISSING_TOKEN, "Invalid Authorization header")
    return token.strip()
