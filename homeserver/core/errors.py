"""The one error type of the homeserver and the Matrix error codes it carries."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Codes(StrEnum):
    FORBIDDEN = "M_FORBIDDEN"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    USER_LOCKED = "M_USER_LOCKED"
    USER_SUSPENDED = "M_USER_SUSPENDED"
    INVITE_BLOCKED = "M_INVITE_BLOCKED"
    BAD_JSON = "M_BAD_JSON"
    BAD_ALIAS = "M_BAD_ALIAS"
    NOT_JSON = "M_NOT_JSON"
    NOT_FOUND = "M_NOT_FOUND"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    UNRECOGNIZED = "M_UNRECOGNIZED"
    UNKNOWN = "M_UNKNOWN"
    UNAUTHORIZED = "M_UNAUTHORIZED"
    USER_DEACTIVATED = "M_USER_DEACTIVATED"
    USER_IN_USE = "M_USER_IN_USE"
    INVALID_USERNAME = "M_INVALID_USERNAME"
    ROOM_IN_USE = "M_ROOM_IN_USE"
    INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"
    THREEPID_IN_USE = "M_THREEPID_IN_USE"
    THREEPID_NOT_FOUND = "M_THREEPID_NOT_FOUND"
    THREEPID_AUTH_FAILED = "M_THREEPID_AUTH_FAILED"
    THREEPID_DENIED = "M_THREEPID_DENIED"
    THREEPID_MEDIUM_NOT_SUPPORTED = "M_THREEPID_MEDIUM_NOT_SUPPORTED"
    # Identity Service API codes that the homeserver's own submit_url shares (spec v1.18).
    TOKEN_INCORRECT = "M_TOKEN_INCORRECT"
    SESSION_EXPIRED = "M_SESSION_EXPIRED"
    EMAIL_SEND_ERROR = "M_EMAIL_SEND_ERROR"
    UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
    INCOMPATIBLE_ROOM_VERSION = "M_INCOMPATIBLE_ROOM_VERSION"
    UNABLE_TO_AUTHORISE_JOIN = "M_UNABLE_TO_AUTHORISE_JOIN"
    UNABLE_TO_GRANT_JOIN = "M_UNABLE_TO_GRANT_JOIN"
    BAD_STATE = "M_BAD_STATE"
    GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
    MISSING_PARAM = "M_MISSING_PARAM"
    INVALID_PARAM = "M_INVALID_PARAM"
    TOO_LARGE = "M_TOO_LARGE"
    EXCLUSIVE = "M_EXCLUSIVE"
    RESOURCE_LIMIT_EXCEEDED = "M_RESOURCE_LIMIT_EXCEEDED"
    CANNOT_LEAVE_SERVER_NOTICE_ROOM = "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"
    WEAK_PASSWORD = "M_WEAK_PASSWORD"
    UNKNOWN_POS = "M_UNKNOWN_POS"
    SERVER_NOT_TRUSTED = "M_SERVER_NOT_TRUSTED"
    DUPLICATE_ANNOTATION = "M_DUPLICATE_ANNOTATION"
    NOT_YET_UPLOADED = "M_NOT_YET_UPLOADED"
    CANNOT_OVERWRITE_MEDIA = "M_CANNOT_OVERWRITE_MEDIA"
    INVALID_SIGNATURE = "M_INVALID_SIGNATURE"
    WRONG_ROOM_KEYS_VERSION = "M_WRONG_ROOM_KEYS_VERSION"
    MAX_DELAY_EXCEEDED = "M_MAX_DELAY_EXCEEDED"  # MSC4140
    # POST /appservice/{appserviceId}/ping (spec v1.7)
    URL_NOT_SET = "M_URL_NOT_SET"
    CONNECTION_TIMEOUT = "M_CONNECTION_TIMEOUT"
    CONNECTION_FAILED = "M_CONNECTION_FAILED"
    BAD_STATUS = "M_BAD_STATUS"
    # Thread subscriptions (MSC4306), unstable codes as Synapse sends them.
    MSC4306_CONFLICTING_UNSUBSCRIPTION = "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION"
    MSC4306_NOT_IN_THREAD = "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD"
    UNKNOWN_DEVICE = "M_UNKNOWN_DEVICE"  # an application service names a device that is not


DEFAULT_STATUS: dict[Codes, int] = {
    Codes.FORBIDDEN: 403,
    Codes.UNKNOWN_TOKEN: 401,
    Codes.MISSING_TOKEN: 401,
    Codes.USER_LOCKED: 401,
    Codes.USER_SUSPENDED: 403,
    Codes.INVITE_BLOCKED: 403,
    Codes.BAD_JSON: 400,
    Codes.BAD_ALIAS: 400,
    Codes.NOT_JSON: 400,
    Codes.NOT_FOUND: 404,
    Codes.LIMIT_EXCEEDED: 429,
    Codes.UNRECOGNIZED: 404,
    Codes.UNKNOWN: 500,
    Codes.UNAUTHORIZED: 401,
    Codes.USER_DEACTIVATED: 403,
    Codes.USER_IN_USE: 400,
    Codes.INVALID_USERNAME: 400,
    Codes.ROOM_IN_USE: 400,
    Codes.INVALID_ROOM_STATE: 400,
    Codes.THREEPID_IN_USE: 400,
    Codes.THREEPID_NOT_FOUND: 400,
    Codes.THREEPID_AUTH_FAILED: 400,
    Codes.THREEPID_DENIED: 403,
    Codes.THREEPID_MEDIUM_NOT_SUPPORTED: 400,
    Codes.TOKEN_INCORRECT: 400,
    Codes.SESSION_EXPIRED: 400,
    Codes.EMAIL_SEND_ERROR: 502,  # the SMTP server failed, not the client
    Codes.UNSUPPORTED_ROOM_VERSION: 400,
    Codes.INCOMPATIBLE_ROOM_VERSION: 400,
    Codes.UNABLE_TO_AUTHORISE_JOIN: 400,
    Codes.UNABLE_TO_GRANT_JOIN: 400,
    Codes.BAD_STATE: 400,
    Codes.GUEST_ACCESS_FORBIDDEN: 403,
    Codes.MISSING_PARAM: 400,
    Codes.INVALID_PARAM: 400,
    Codes.TOO_LARGE: 413,
    Codes.EXCLUSIVE: 400,
    Codes.RESOURCE_LIMIT_EXCEEDED: 403,
    Codes.CANNOT_LEAVE_SERVER_NOTICE_ROOM: 403,
    Codes.WEAK_PASSWORD: 400,
    Codes.UNKNOWN_POS: 400,
    Codes.MAX_DELAY_EXCEEDED: 400,
    Codes.SERVER_NOT_TRUSTED: 400,
    Codes.DUPLICATE_ANNOTATION: 400,
    Codes.NOT_YET_UPLOADED: 504,
    Codes.CANNOT_OVERWRITE_MEDIA: 409,
    Codes.MSC4306_CONFLICTING_UNSUBSCRIPTION: 409,
    Codes.INVALID_SIGNATURE: 400,
    Codes.WRONG_ROOM_KEYS_VERSION: 403,
    Codes.URL_NOT_SET: 400,
    Codes.CONNECTION_TIMEOUT: 504,
    Codes.CONNECTION_FAILED: 502,
    Codes.BAD_STATUS: 502,
    Codes.UNKNOWN_DEVICE: 400,
}


class MatrixError(Exception):
    """An error a client sees as ``{"errcode": ..., "error": ..., **extra}``.

    ``status`` defaults to the code's usual HTTP status; pass it only where the spec differs
    (an unknown room version is 400, but an unsupported media type is 415 ``M_UNKNOWN``...).
    """

    def __init__(
        self, code: Codes, message: str, *, status: int | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else DEFAULT_STATUS.get(code, 400)
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": str(self.code), "error": self.message, **self.extra}
