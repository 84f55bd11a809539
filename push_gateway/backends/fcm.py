"""Firebase Cloud Messaging HTTP v1 with a service account (OAuth 2.0 JWT bearer grant).

Token (Google, "Using OAuth 2.0 for Server to Server Applications"): a JWT signed RS256 with
the service account's key (``kid``: its key ID; claims ``iss``: its e-mail, ``scope``:
firebase.messaging, ``aud``: the token URI, ``iat``, ``exp`` at most an hour later) is posted
to the token URI as ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``. Send (FCM,
"projects.messages.send"): ``POST /v1/projects/<project>/messages:send`` with the access
token as a bearer and ``{"message": {"token": ..., "data": {string: string}, "android":
...}}``. A 404 ``UNREGISTERED`` (or an invalid token) is a dead pushkey.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import jwt
import orjson

from push_gateway.backends import JsonDict, Result, ssl_context, summary
from push_gateway.config import FcmApp

logger = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 3600  # Google: at most an hour
DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "INVALID_ARGUMENT"})


class FcmBackend:
    def __init__(self, config: FcmApp, timeout_s: float) -> None:
        account = orjson.loads(Path(config.service_account_file).read_bytes())
        self._project = account["project_id"]
        self._email = account["client_email"]
        self._key = account["private_key"]
        self._key_id = account.get("private_key_id")
        self._token_uri = config.token_uri or account.get(
            "token_uri", "https://oauth2.googleapis.com/token"
        )
        self._base_url = config.base_url.rstrip("/")
        self._access: tuple[str, float] | None = None
        self._lock = asyncio.Lock()
        self._http = httpx.AsyncClient(timeout=timeout_s, verify=ssl_context(config.ca_file))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _access_token(self, *, fresh: bool = False) -> str | None:
        # One grant at a time: the devices of a notification are sent concurrently.
        async with self._lock:
            now = time.time()
            if not fresh and self._access is not None and now < self._access[1]:
                return self._access[0]
            return await self._grant(now)

    async def _grant(self, now: float) -> str | None:
        assertion = jwt.encode(
            {
                "iss": self._email,
                "scope": SCOPE,
                "aud": self._token_uri,
                "iat": int(now),
                "exp": int(now) + ASSERTION_LIFETIME_S,
            },
            self._key,
            algorithm="RS256",
            headers={"kid": self._key_id} if self._key_id else None,
        )
        try:
            response = await self._http.post(
                self._token_uri, data={"grant_type": GRANT_TYPE, "assertion": assertion}
            )
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(token, str):
            logger.warning("fcm token refused", extra={"status": response.status_code})
            return None
        expires_in = body.get("expires_in")
        lifetime = expires_in if isinstance(expires_in, int) else 3600
        self._access = (token, now + max(0, lifetime - 60))
        return token

    async def send(self, notification: JsonDict, device: JsonDict) -> Result:
        pushkey = device.get("pushkey")
        if not isinstance(pushkey, str) or not pushkey:
            return Result.REJECTED
        message = {
            "message": {
                "token": pushkey,
                "data": self._data(notification, device),
                "android": {
                    "priority": "high" if notification.get("prio", "high") == "high" else "normal"
                },
            }
        }
        url = f"{self._base_url}/v1/projects/{self._project}/messages:send"
        for attempt in range(2):
            token = await self._access_token(fresh=attempt > 0)
            if token is None:
                return Result.RETRY
            try:
                response = await self._http.post(
                    url, json=message, headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.HTTPError:
                return Result.RETRY
            if response.status_code == 200:
                return Result.SENT
            if response.status_code == 401 and attempt == 0:
                continue  # the access token expired early: a new one, once
            code = _error_code(response)
            if response.status_code == 404 or code in DEAD_TOKEN_CODES:
                return Result.REJECTED
            if response.status_code == 429 or response.status_code >= 500:
                return Result.RETRY
            logger.warning("fcm refused", extra={"status": response.status_code, "code": code})
            return Result.SENT
        return Result.RETRY

    @staticmethod
    def _data(notification: JsonDict, device: JsonDict) -> dict[str, str]:
        """FCM data messages carry strings only: other values as JSON."""
        out: dict[str, str] = {}
        for key, value in summary(notification, device).items():
            out[key] = value if isinstance(value, str) else orjson.dumps(value).decode()
        return out


def _error_code(response: httpx.Response) -> str | None:
    """The FCM error code (in ``details``) or the status (``NOT_FOUND``, ...)."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
            return str(detail["errorCode"])
    status = error.get("status")
    return status if isinstance(status, str) else None
