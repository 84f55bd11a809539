"""Pushers (spec: "Pushers"): GET /pushers and POST /pushers/set, validated.

An ``http`` pusher's URL must be a push gateway's notify endpoint and must not lead to an
address the outbound policy refuses (SSRF: the server makes requests to it; the sender's
requests are checked again by the outbound transport, as the name may resolve elsewhere). An
``email`` pusher sends missed-message mails to its pushkey, when e-mail is configured, and
only to an address bound to the account (validated by mail, as Synapse requires): the server
mails nobody who did not ask for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from homeserver.accounts.email_validation import MEDIUM_EMAIL, canonical_email
from homeserver.accounts.uia import EmailIdentity
from homeserver.core.clock import Clock
from homeserver.core.config import EmailConfig, PushConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.net.outbound import Outbound, OutboundError, Reason
from homeserver.storage.pushers import Pusher, PusherStore

NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_PUSHKEY_BYTES = 512  # spec
MAX_APP_ID_CHARS = 64  # spec
MAX_FIELD_CHARS = 1024  # ours: display names, lang, profile tag
MAX_DATA_BYTES = 4096  # ours: data is sent with every push
EMAIL_APP_ID = "m.email"  # spec: an email pusher's app_id
FORMATS = ("event_id_only",)


@dataclass(frozen=True, slots=True)
class PusherRequest:
    """A /pushers/set body, as the route parsed it."""

    kind: str | None
    app_id: str
    pushkey: str
    app_display_name: str | None = None
    device_display_name: str | None = None
    profile_tag: str | None = None
    lang: str | None = None
    data: JsonDict | None = None
    append: bool = False


def pusher_json(p: Pusher) -> JsonDict:
    out: JsonDict = {
        "pushkey": p.pushkey,
        "kind": p.kind,
        "app_id": p.app_id,
        "app_display_name": p.app_display_name,
        "device_display_name": p.device_display_name,
        "lang": p.lang,
        "data": p.data,
    }
    if p.profile_tag is not None:
        out["profile_tag"] = p.profile_tag
    return out


def check_gateway_url_form(url: Any, config: PushConfig) -> str:
    """The URL, if it is a push gateway's as the config accepts them; M_INVALID_PARAM
    otherwise. Its address is checked by the outbound transport at every connection."""
    if not isinstance(url, str) or not url:
        raise MatrixError(Codes.INVALID_PARAM, "data.url must be the push gateway's URL")
    parts = urlsplit(url)
    allowed = ("https", "http") if config.allow_http else ("https",)
    if parts.scheme not in allowed:
        raise MatrixError(Codes.INVALID_PARAM, "data.url must be an https:// URL")
    if not parts.hostname or parts.username or parts.password:
        raise MatrixError(Codes.INVALID_PARAM, "data.url must name a host, without credentials")
    if not parts.path.endswith(NOTIFY_PATH) or parts.query or parts.fragment:
        raise MatrixError(Codes.INVALID_PARAM, f"data.url must end with {NOTIFY_PATH}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise MatrixError(Codes.INVALID_PARAM, "data.url has an invalid port") from None
    return url


async def check_gateway_url(url: Any, config: PushConfig, outbound: Outbound) -> str:
    """The URL, if pushes may go there now; M_INVALID_PARAM otherwise."""
    checked = check_gateway_url_form(url, config)
    try:
        await outbound.check_url(checked)
    except OutboundError as e:
        if e.reason in (Reason.UNRESOLVABLE, Reason.TIMEOUT):
            raise MatrixError(Codes.INVALID_PARAM, "data.url's host does not resolve") from None
        if e.reason is Reason.REFUSED:
            raise MatrixError(Codes.INVALID_PARAM, "data.url leads to a private address") from None
        raise MatrixError(Codes.INVALID_PARAM, "data.url is not a valid URL") from None
    return checked


# A link in a missed-message mail unsubscribes for this long after the mail was sent.
UNSUBSCRIBE_LINK_LIFETIME_MS = 365 * 24 * 3600 * 1000
# Links from before the link key (signed with a key derived from the federation signing
# key, without an expiry) are still honoured for this long after the server's secret was
# created, that is after the upgrade that introduced it; then only new links verify.
LEGACY_UNSUBSCRIBE_GRACE_MS = 90 * 24 * 3600 * 1000
_TOKEN_VERSION = "v2"


class Unsubscriber:
    """Signed one-click unsubscribe tokens for e-mail pushers (no login needed).

    ``key`` is this purpose's own key (``ServerSecret.derive("push-unsubscribe")``); a token
    carries its expiry. ``legacy_secret`` is the signing key's bytes that signed tokens
    before, accepted until ``legacy_until_ms``.
    """

    def __init__(
        self,
        key: bytes,
        clock: Clock,
        *,
        legacy_secret: bytes | None = None,
        legacy_until_ms: int = 0,
    ) -> None:
        self._key = key
        self._clock = clock
        self._legacy_key = (
            hmac.new(legacy_secret, b"push-unsubscribe", hashlib.sha256).digest()
            if legacy_secret is not None
            else None
        )
        self._legacy_until_ms = legacy_until_ms

    def token(self, user_id: UserID, app_id: str, pushkey: str) -> str:
        expires = self._clock.now_ms() + UNSUBSCRIBE_LINK_LIFETIME_MS
        fields = [user_id, app_id, pushkey, expires]
        payload = base64.urlsafe_b64encode(orjson.dumps(fields)).decode()
        signed = f"{_TOKEN_VERSION}.{payload}"
        return f"{signed}.{_sign(self._key, signed)}"

    def parse(self, token: str) -> tuple[str, str, str] | None:
        version, _, rest = token.partition(".")
        if version == _TOKEN_VERSION:
            payload, _, signature = rest.partition(".")
            if not hmac.compare_digest(signature, _sign(self._key, f"{version}.{payload}")):
                return None
            fields = _decode(payload)
            if fields is None or len(fields) != 4 or not isinstance(fields[3], int):
                return None
            if fields[3] < self._clock.now_ms():
                return None
            return _strings(fields[:3])
        # A link from before the link key: "payload.signature", no expiry.
        payload, _, signature = token.partition(".")
        if self._legacy_key is None or self._clock.now_ms() > self._legacy_until_ms:
            return None
        if not hmac.compare_digest(signature, _sign(self._legacy_key, payload)):
            return None
        fields = _decode(payload)
        if fields is None or len(fields) != 3:
            return None
        return _strings(fields)


def _sign(key: bytes, payload: str) -> str:
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _decode(payload: str) -> list[Any] | None:
    try:
        fields = orjson.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError):
        return None
    return fields if isinstance(fields, list) else None


def _strings(fields: list[Any]) -> tuple[str, str, str] | None:
    user_id, app_id, pushkey = fields
    if not all(isinstance(v, str) for v in (user_id, app_id, pushkey)):
        return None
    return user_id, app_id, pushkey


class PusherService:
    def __init__(
        self,
        store: PusherStore,
        config: PushConfig,
        email: EmailConfig,
        clock: Clock,
        unsubscriber: Unsubscriber,
        email_identity: EmailIdentity,
        outbound: Outbound,
    ) -> None:
        self._store = store
        self._config = config
        self._email = email
        self._clock = clock
        self.unsubscriber = unsubscriber
        self._email_identity = email_identity
        self._outbound = outbound

    async def get_pushers(self, requester: Requester) -> list[JsonDict]:
        """GET /pushers"""
        return [pusher_json(p) for p in await self._store.get_pushers(requester.user_id)]

    async def set_pusher(self, requester: Requester, req: PusherRequest) -> None:
        """POST /pushers/set"""
        _check_ids(req)
        if req.kind is None:
            # spec: kind null deletes the pusher; deleting what is not there is a no-op.
            await self._store.delete_pusher(requester.user_id, req.app_id, req.pushkey)
            return
        missing = [
            name
            for name in ("app_display_name", "device_display_name", "lang", "data")
            if getattr(req, name) is None
        ]
        if missing:
            raise MatrixError(Codes.MISSING_PARAM, f"Missing parameters: {', '.join(missing)}")
        assert req.data is not None and req.lang is not None
        for name in ("app_display_name", "device_display_name", "lang", "profile_tag"):
            value = getattr(req, name)
            if value is not None and len(value) > MAX_FIELD_CHARS:
                raise MatrixError(Codes.INVALID_PARAM, f"{name} is too long")
        if len(orjson.dumps(req.data)) > MAX_DATA_BYTES:
            raise MatrixError(Codes.INVALID_PARAM, f"data is larger than {MAX_DATA_BYTES} bytes")
        fmt = req.data.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise MatrixError(Codes.INVALID_PARAM, "data.format must be event_id_only")
        if req.kind == "http":
            await check_gateway_url(req.data.get("url"), self._config, self._outbound)
        elif req.kind == "email":
            await self._check_email(requester, req)
        else:
            raise MatrixError(Codes.INVALID_PARAM, "kind must be http, email or null")
        await self._store.set_pusher(
            user_id=requester.user_id,
            kind=req.kind,
            app_id=req.app_id,
            pushkey=req.pushkey,
            app_display_name=req.app_display_name or "",
            device_display_name=req.device_display_name or "",
            profile_tag=req.profile_tag,
            lang=req.lang,
            data=req.data,
            ts=self._clock.now_ms(),
            device_id=requester.device_id,
            append=req.append,
        )

    async def _check_email(self, requester: Requester, req: PusherRequest) -> None:
        if not self._email.enabled:
            raise MatrixError(
                Codes.INVALID_PARAM, "E-mail notifications are not configured on this server"
            )
        if req.app_id != EMAIL_APP_ID:
            raise MatrixError(Codes.INVALID_PARAM, f"An email pusher's app_id is {EMAIL_APP_ID}")
        if canonical_email(req.pushkey) is None:
            raise MatrixError(Codes.INVALID_PARAM, "An email pusher's pushkey is an e-mail address")
        # As Synapse: 400 M_THREEPID_NOT_FOUND unless the account has the address (added
        # through /account/3pid/add, which proved the user reads it).
        if await self._email_identity.owner_of(MEDIUM_EMAIL, req.pushkey) != requester.user_id:
            raise MatrixError(
                Codes.THREEPID_NOT_FOUND,
                "This e-mail address is not bound to "
                "your account: add it first (/account/3pid/add)",
            )

    async def unsubscribe(self, token: str) -> bool:
        """The link in a missed-message mail: removes that e-mail pusher."""
        parsed = self.unsubscriber.parse(token)
        if parsed is None:
            raise MatrixError(Codes.FORBIDDEN, "Invalid or expired unsubscribe link")
        user_id, app_id, pushkey = parsed
        return await self._store.delete_pusher(user_id, app_id, pushkey)

    async def delete_for_devices(self, user_id: UserID, device_ids: list[str]) -> None:
        """A deleted device (or logged-out session) takes its pushers with it."""
        await self._store.delete_pushers_for_devices(user_id, device_ids)


def _check_ids(req: PusherRequest) -> None:
    if not req.app_id or len(req.app_id) > MAX_APP_ID_CHARS:
        raise MatrixError(Codes.INVALID_PARAM, f"app_id must be 1 to {MAX_APP_ID_CHARS} characters")
    if not req.pushkey or len(req.pushkey.encode()) > MAX_PUSHKEY_BYTES:
        raise MatrixError(Codes.INVALID_PARAM, f"pushkey must be 1 to {MAX_PUSHKEY_BYTES} bytes")
