"""Requests to application services (the Application Service API): transactions, user and
alias queries, the ping, and third-party lookups.

The URLs come from the registration files, which the operator wrote, not from users: the
requests go through the one outbound transport (one deadline, bounded bodies, no redirects
followed), but with an address policy that lets them reach loopback and private addresses,
where bridges usually run (docs/appservices.md). The ``hs_token`` goes in the
``Authorization`` header only (spec v1.4); the deprecated ``access_token`` query parameter
is not sent, so that it never ends up in a bridge's access logs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from homeserver.appservice.registration import AppService
from homeserver.core.json_limits import loads_limited
from homeserver.core.pool_guard import before_waiting
from homeserver.net.outbound import Outbound, OutboundError, Reason

logger = logging.getLogger(__name__)

APP_PREFIX = "/_matrix/app/v1"
# A service's answer to a query or a lookup; a transaction's answer is read and thrown away.
MAX_RESPONSE_BYTES = 1024 * 1024


class ServiceUnavailable(Exception):
    """The service could not be reached, or answered with something else than JSON."""

    def __init__(self, reason: str, status: int | None = None, body: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason  # "timeout", "unreachable", "bad_status", "bad_response"
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class ServiceAnswer:
    status: int
    body: Any  # the decoded JSON, None when the body is not JSON
    raw: bytes
    duration_ms: int


class AppServiceClient:
    def __init__(self, outbound: Outbound, *, timeout_s: float) -> None:
        self._http = outbound.client(timeout_s=timeout_s, user_agent="homeserver")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        service: AppService,
        method: str,
        path: str,
        *,
        body: Any = None,
        content: bytes | None = None,
        query: dict[str, str] | None = None,
    ) -> ServiceAnswer:
        """``path`` under ``/_matrix/app/v1``; ServiceUnavailable when nothing came back."""
        assert service.url is not None
        url = f"{service.url}{APP_PREFIX}{path}"
        if query:
            url = f"{url}?{urlencode(query)}"
        if body is not None:
            content = orjson.dumps(body)
        headers = {"Authorization": f"Bearer {service.hs_token}"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        # A request's pinned database reads let their connection go while the service thinks.
        await before_waiting("an application service")
        started = time.monotonic()
        try:
            response = await self._http.request(
                method, url, max_bytes=MAX_RESPONSE_BYTES, headers=headers, content=content
            )
        except OutboundError as e:
            reason = "timeout" if e.reason == Reason.TIMEOUT else "unreachable"
            logger.info(
                "application service request failed",
                extra={"app_service": service.id, "path": path, "reason": str(e)},
            )
            raise ServiceUnavailable(reason) from e
        duration_ms = int((time.monotonic() - started) * 1000)
        try:
            decoded = loads_limited(response.body) if response.body else None
        except Exception:
            decoded = None
        return ServiceAnswer(response.status_code, decoded, response.body, duration_ms)

    async def put_transaction(self, service: AppService, txn_id: int, body: str) -> bool:
        """True when the service took the transaction (200)."""
        try:
            answer = await self.request(
                service, "PUT", f"/transactions/{txn_id}", content=body.encode()
            )
        except ServiceUnavailable:
            return False
        if answer.status != 200:
            logger.info(
                "application service refused a transaction",
                extra={"app_service": service.id, "txn_id": txn_id, "status": answer.status},
            )
        return answer.status == 200

    async def query_user(self, service: AppService, user_id: str) -> bool:
        """spec: GET /users/{userId}: 200 when the service has created the user."""
        try:
            answer = await self.request(service, "GET", f"/users/{quote(user_id, safe='')}")
        except ServiceUnavailable:
            return False
        return answer.status == 200

    async def query_alias(self, service: AppService, alias: str) -> bool:
        """spec: GET /rooms/{roomAlias}: 200 when the service has created the room."""
        try:
            answer = await self.request(service, "GET", f"/rooms/{quote(alias, safe='')}")
        except ServiceUnavailable:
            return False
        return answer.status == 200
