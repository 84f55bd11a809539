"""WebPush (RFC 8030) with VAPID (RFC 8292) and aes128gcm payloads (RFC 8291), via pywebpush.

The pushkey is the subscription's ``p256dh`` key; the device's ``data`` has the subscription
``endpoint`` and ``auth`` secret (the convention web clients use with Matrix push gateways).
Endpoints come from clients, so they are reached through the outbound transport (SSRF).
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

import orjson
from py_vapid import Vapid02  # type: ignore[import-untyped]
from pywebpush import WebPusher, WebPushException  # type: ignore[import-untyped]

from homeserver.net.outbound import Outbound, OutboundError, Reason
from push_gateway.backends import JsonDict, Result, summary
from push_gateway.config import WebPushApp

logger = logging.getLogger(__name__)

VAPID_LIFETIME_S = 12 * 3600  # RFC 8292: at most 24 hours
MAX_RESPONSE_BYTES = 64 * 1024  # only the status matters


class WebPushBackend:
    def __init__(self, config: WebPushApp, timeout_s: float, outbound: Outbound) -> None:
        self._config = config
        if config.vapid_private_key_file is not None:
            self._vapid = Vapid02.from_file(config.vapid_private_key_file)
        elif config.vapid_private_key is not None:
            self._vapid = Vapid02.from_string(config.vapid_private_key)
        else:
            raise ValueError("a webpush app needs vapid_private_key_file or vapid_private_key")
        self._http = outbound.client(timeout_s=timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, notification: JsonDict, device: JsonDict) -> Result:
        data = device.get("data") if isinstance(device.get("data"), dict) else {}
        assert isinstance(data, dict)
        endpoint, auth = data.get("endpoint"), data.get("auth")
        pushkey = device.get("pushkey")
        if (
            not isinstance(endpoint, str)
            or not isinstance(auth, str)
            or not isinstance(pushkey, str)
        ):
            return Result.REJECTED  # not a WebPush subscription: it can never work
        parts = urlsplit(endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            return Result.REJECTED
        payload = self._payload(notification, device)
        try:
            pusher = WebPusher({"endpoint": endpoint, "keys": {"p256dh": pushkey, "auth": auth}})
            encoded = pusher.encode(payload, content_encoding="aes128gcm")
        except (WebPushException, ValueError, TypeError):
            return Result.REJECTED  # keys that are not keys
        origin = f"{parts.scheme}://{parts.netloc}"
        headers = self._vapid.sign(
            {
                "sub": self._config.vapid_contact,
                "aud": origin,
                "exp": int(time.time()) + VAPID_LIFETIME_S,
            }
        )
        headers.update(
            {
                "Content-Encoding": "aes128gcm",
                "TTL": str(self._config.ttl_s),
                "Urgency": "high" if notification.get("prio", "high") == "high" else "normal",
                "Content-Type": "application/octet-stream",
            }
        )
        try:
            response = await self._http.request(
                "POST",
                endpoint,
                content=encoded["body"],
                headers=headers,
                max_bytes=MAX_RESPONSE_BYTES,
                truncate=True,
            )
        except OutboundError as e:
            if e.reason in (Reason.REFUSED, Reason.UNRESOLVABLE, Reason.INVALID_URL):
                logger.warning("webpush endpoint refused", extra={"reason": str(e.reason)})
                return Result.REJECTED
            return Result.RETRY
        if response.status_code in (200, 201, 202):
            return Result.SENT
        if response.status_code in (404, 410):  # RFC 8030: the subscription is gone
            return Result.REJECTED
        if response.status_code == 429 or response.status_code >= 500:
            return Result.RETRY
        logger.warning("webpush refused", extra={"status": response.status_code})
        return Result.SENT  # our request was wrong: retrying will not help

    def _payload(self, notification: JsonDict, device: JsonDict) -> bytes:
        body = summary(notification, device)
        raw = orjson.dumps(body)
        if len(raw) > self._config.max_payload_bytes:
            body.pop("content", None)  # the client fetches the event itself
            raw = orjson.dumps(body)
        return raw
