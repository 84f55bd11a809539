"""``GET /health``: whether this worker can serve now, for load balancers' checks.

200 ``{"status": "ok", ...}`` when the database answers (and Redis, when the workers share
one); 503 with the reason otherwise, and while the worker is shutting down (the balancer
stops sending it requests before it goes). Unauthenticated, and reads nothing of anyone's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.jsonutil import dumps
from homeserver.web.edge import services_of

logger = logging.getLogger(__name__)

# A check that takes longer than this counts as failed: the balancer's own check times out
# soon after.
CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class HealthServices:
    worker: str
    database: Callable[[], Awaitable[None]]  # raises when the database cannot be reached
    redis: Callable[[], Awaitable[bool]] | None  # None: no Redis configured
    bus_subscribed: Callable[[], bool] | None
    closing: Callable[[], bool]


async def _check(name: str, probe: Callable[[], Awaitable[object]]) -> str | None:
    """None when it answers in time, else the reason."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            if await probe() is False:
                return f"{name} unreachable"
    except TimeoutError:
        return f"{name} timed out"
    except Exception as e:
        logger.warning("health check failed", extra={"check": name, "error": type(e).__name__})
        return f"{name} unreachable"
    return None


async def get_health(request: Request) -> Response:
    """GET /health"""
    health = services_of(request, HealthServices)
    reasons: list[str] = []
    if health.closing():
        reasons.append("shutting down")
    failed = await _check("database", health.database)
    if failed is not None:
        reasons.append(failed)
    if health.redis is not None:
        failed = await _check("redis", health.redis)
        if failed is not None:
            reasons.append(failed)
        elif health.bus_subscribed is not None and not health.bus_subscribed():
            reasons.append("redis bus not subscribed")
    body: dict[str, object] = {"status": "ok" if not reasons else "unavailable"}
    body["worker"] = health.worker
    if reasons:
        body["reasons"] = reasons
    return Response(
        dumps(body),
        status_code=200 if not reasons else 503,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


routes = [Route("/health", get_health, methods=["GET", "HEAD"])]
