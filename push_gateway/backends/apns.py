"""APNs over HTTP/2 with token-based authentication (a JWT signed ES256 with the team's key).

Request (Apple, "Sending notification requests to APNs"): ``POST /3/device/<token>`` with
``authorization: bearer <JWT>`` (header ``alg: ES256``, ``kid``; claims ``iss``: team ID,
``iat``), ``apns-topic``, ``apns-push-type``, ``apns-priority``; a JSON body with ``aps``.
The pushkey is the device token in base64 (spec recommendation) or hex.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from pathlib import Path

import httpx
import jwt

from push_gateway.backends import JsonDict, Result, ssl_context, summary
from push_gateway.config import ApnsApp

logger = logging.getLogger(__name__)

# Apple: a provider token is valid for an hour and must not be refreshed more often than
# every 20 minutes.
TOKEN_REFRESH_S = 50 * 60
_HEX = re.compile(r"^[0-9a-fA-F]{32,200}\Z")
# Apple's reasons (status 400 / 410) that mean the token will never work.
DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"})


def device_token(pushkey: str) -> str | None:
    if _HEX.match(pushkey):
        return pushkey.lower()
    try:
        raw = base64.b64decode(pushkey, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if raw else None


class ApnsBackend:
    def __init__(self, config: ApnsApp, timeout_s: float) -> None:
        self._config = config
        self._key = Path(config.key_file).read_text()
        self._token: tuple[str, float] | None = None
        self._http = httpx.AsyncClient(
            http2=True, timeout=timeout_s, verify=ssl_context(config.ca_file)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _provider_token(self, *, fresh: bool = False) -> str:
        now = time.time()
        if fresh or self._token is None or now - self._token[1] > TOKEN_REFRESH_S:
            token = jwt.encode(
                {"iss": self._config.team_id, "iat": int(now)},
                self._key,
                algorithm="ES256",
                headers={"kid": self._config.key_id},
            )
            self._token = (token, now)
        return self._token[0]

    async def send(self, notification: JsonDict, device: JsonDict) -> Result:
        pushkey = device.get("pushkey")
        token = device_token(pushkey) if isinstance(pushkey, str) else None
        if token is None:
            return Result.REJECTED
        body = self._body(notification, device)
        high = notification.get("prio", "high") == "high"
        for attempt in range(2):
            headers = {
                "authorization": f"bearer {self._provider_token(fresh=attempt > 0)}",
                "apns-topic": self._config.topic,
                "apns-push-type": "alert",
                "apns-priority": "10" if high else "5",
                "apns-expiration": "0",
            }
            try:
                response = await self._http.post(
                    f"{self._config.base_url.rstrip('/')}/3/device/{token}",
                    json=body,
                    headers=headers,
                )
            except httpx.HTTPError:
                return Result.RETRY
            if response.status_code == 200:
                return Result.SENT
            reason = _reason(response)
            if response.status_code == 410 or reason in DEAD_TOKEN_REASONS:
                return Result.REJECTED
            if (
                response.status_code == 403
                and reason in ("ExpiredProviderToken", "InvalidProviderToken")
                and attempt == 0
            ):
                continue  # a new provider token, once
            if response.status_code == 429 or response.status_code >= 500:
                return Result.RETRY
            logger.warning("apns refused", extra={"status": response.status_code, "reason": reason})
            return Result.RETRY if response.status_code == 403 else Result.SENT
        return Result.RETRY

    def _body(self, notification: JsonDict, device: JsonDict) -> JsonDict:
        data = summary(notification, device)
        content = (
            notification.get("content") if isinstance(notification.get("content"), dict) else {}
        )
        assert isinstance(content, dict)
        sender = notification.get("sender_display_name") or notification.get("sender")
        text = content.get("body") if isinstance(content.get("body"), str) else None
        alert: JsonDict = {
            "title": notification.get("room_name") or sender or "New event",
            "body": f"{sender}: {text}" if sender and text else text or "New event",
        }
        aps: JsonDict = {"alert": alert, "mutable-content": 1}  # the app may fetch the event
        if isinstance(data.get("unread"), int):
            aps["badge"] = data["unread"]
        tweaks = device.get("tweaks")
        if isinstance(tweaks, dict) and isinstance(tweaks.get("sound"), str):
            aps["sound"] = tweaks["sound"]
        data.pop("content", None)  # 4 KiB at most: the app fetches the event by its ID
        return {"aps": aps, **{k: v for k, v in data.items() if k != "aps"}}


def _reason(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else None
