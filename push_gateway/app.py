"""The gateway's ASGI app: ``POST /_matrix/push/v1/notify``, devices routed by ``app_id``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from homeserver.core.errors import MatrixError
from homeserver.core.json_limits import loads_limited
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from push_gateway.backends import Backend, JsonDict, Result
from push_gateway.backends.apns import ApnsBackend
from push_gateway.backends.fcm import FcmBackend
from push_gateway.backends.webpush import WebPushBackend
from push_gateway.config import ApnsApp, FcmApp, GatewayConfig, GatewayConfigError, WebPushApp

logger = logging.getLogger(__name__)

NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_BODY_BYTES = 256 * 1024
MAX_DEVICES = 100


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(errcode: str, message: str, status: int) -> Response:
    return _json({"errcode": errcode, "error": message}, status)


def build_backend(
    app: WebPushApp | ApnsApp | FcmApp, timeout_s: float, outbound: Outbound
) -> Backend:
    if isinstance(app, WebPushApp):
        return WebPushBackend(app, timeout_s, outbound)
    if isinstance(app, ApnsApp):
        return ApnsBackend(app, timeout_s)
    return FcmBackend(app, timeout_s)


class Gateway:
    """The backends of every configured app, and the notify endpoint that uses them."""

    def __init__(
        self,
        config: GatewayConfig,
        backends: dict[str, Backend] | None = None,
        outbound: Outbound | None = None,
    ) -> None:
        self.config = config
        if outbound is None:
            outbound = Outbound(AddressPolicy(config.outbound.allow_addresses))
        elif config.outbound.allow_addresses:
            # Served by the homeserver: one allow list for the process, the homeserver's.
            raise GatewayConfigError(
                "a gateway served by the homeserver (push.gateway_config) uses the "
                "homeserver's outbound.allow_addresses: move its outbound section there"
            )
        self.backends = (
            backends
            if backends is not None
            else {
                app_id: build_backend(app, config.request_timeout_s, outbound)
                for app_id, app in config.apps.items()
            }
        )

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()

    @property
    def routes(self) -> list[BaseRoute]:
        return [Route(NOTIFY_PATH, self.notify, methods=["POST"])]

    async def notify(self, request: Request) -> Response:
        """POST /_matrix/push/v1/notify"""
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _error("M_TOO_LARGE", "Request body too large", 413)
        try:
            # The homeserver's JSON limits: a notification nested past them could not be
            # encoded again for the provider.
            body = loads_limited(raw)
        except MatrixError as e:
            return _error(str(e.code), e.message, 400)
        notification = body.get("notification") if isinstance(body, dict) else None
        if not isinstance(notification, dict):
            return _error("M_BAD_JSON", "notification must be an object", 400)
        devices = notification.get("devices")
        if (
            not isinstance(devices, list)
            or not devices
            or len(devices) > MAX_DEVICES
            or not all(
                isinstance(d, dict)
                and isinstance(d.get("app_id"), str)
                and isinstance(d.get("pushkey"), str)
                for d in devices
            )
        ):
            return _error(
                "M_BAD_JSON", "devices must be a list of objects with app_id and pushkey", 400
            )
        results = await asyncio.gather(*(self._send(notification, d) for d in devices))
        if any(r is Result.RETRY for r in results):
            # The homeserver retries the whole request; providers dedupe nothing, but the
            # devices already reached are few and a repeat is better than a loss.
            return _error("M_UNKNOWN", "A push provider failed; try again later", 502)
        rejected = [
            d["pushkey"] for d, r in zip(devices, results, strict=True) if r is Result.REJECTED
        ]
        return _json({"rejected": rejected})

    async def _send(self, notification: JsonDict, device: JsonDict) -> Result:
        backend = self.backends.get(device["app_id"])
        if backend is None:
            # An app this gateway does not serve will never be delivered to.
            logger.info("unknown app_id", extra={"app_id": device["app_id"]})
            return Result.REJECTED
        try:
            return await backend.send(notification, device)
        except Exception:
            logger.exception("backend failed", extra={"app_id": device["app_id"]})
            return Result.RETRY


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (404, 405):  # spec: unknown endpoints and methods
        return _error("M_UNRECOGNIZED", "Unrecognized request", exc.status_code)
    return _error("M_UNKNOWN", str(exc.detail), exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error", exc_info=exc)
    return _error("M_UNKNOWN", "Internal server error", 500)


def create_app(gateway: Gateway) -> Starlette:
    """The standalone app: closes the backends' connections when it shuts down."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await gateway.aclose()

    app = Starlette(
        routes=gateway.routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.gateway = gateway
    return app
