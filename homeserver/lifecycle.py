"""Running the homeserver: open the database, build it (``app.Homeserver``), run its background
jobs, and serve it under uvicorn (``asgi_app``); stop and close everything on the way out."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from homeserver.app import BackgroundJob, Homeserver
from homeserver.core.clock import Clock, SystemClock
from homeserver.core.config import HomeserverConfig
from homeserver.crypto.signing import load_or_create_signing_key
from homeserver.federation.discovery import ServerResolver
from homeserver.net.outbound import Outbound
from homeserver.routing import create_app
from homeserver.storage.database import Database
from homeserver.storage.migrate import upgrade_head

logger = logging.getLogger(__name__)

# A background job that raised is restarted after this pause.
BACKGROUND_RETRY_S = 5.0
STOP_ATTEMPTS = 20
STOP_WAIT_S = 0.5


@asynccontextmanager
async def running_homeserver(
    config: HomeserverConfig,
    *,
    clock: Clock | None = None,
    migrate: bool = True,
    outbound: Outbound | None = None,
    server_resolver: ServerResolver | None = None,
) -> AsyncIterator[Homeserver]:
    """Open the database (migrated to head), build the services, close them on exit.
    ``outbound`` and ``server_resolver`` replace the config's (tests)."""
    config.data_path.mkdir(parents=True, exist_ok=True)
    db = Database(
        config.database_url,
        pool_size=config.database.pool_size,
        pool_timeout_s=config.database.pool_timeout_ms / 1000,
        writer=config.worker.name,
    )
    try:
        if migrate:
            await upgrade_head(db.engine)
        await db.start_positions()
        signing_key = load_or_create_signing_key(config.signing_key_file)
        hs = Homeserver(
            config,
            db,
            signing_key,
            clock or SystemClock(),
            create_app,
            outbound,
            server_resolver,
        )
        # Application services' senders exist as users before their first request.
        await hs.accounts.ensure_app_service_senders()
        await hs.appservice_sender.prepare()
        # Plain tasks, not a task group: the caller may leave this context from another task
        # than the one that entered it (test fixtures, lifespans).
        tasks = [asyncio.create_task(_run_forever(job)) for job in hs.background_jobs]
        try:
            yield hs
        finally:
            await _stop(tasks)
            await hs.media.close()
            await hs.federation_client.aclose()
            await hs.well_known_client.aclose()
            await hs.media_redirect_client.aclose()
            await hs.appservice_client.aclose()
            close_bus = getattr(hs.bus, "close", None)
            if close_bus is not None:
                await close_bus()
            if hs.sso is not None:
                await hs.sso.aclose()
            if hs.redis is not None:
                await hs.redis.aclose()
    finally:
        await db.close()


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the background tasks and wait for them, cancelling again while any is left: a
    cancellation can be lost in a race inside the job (asyncio.wait_for before 3.12)."""
    for _ in range(STOP_ATTEMPTS):
        tasks = [t for t in tasks if not t.done()]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_WAIT_S)
    logger.error("background jobs did not stop", extra={"jobs": len(tasks)})


async def _run_forever(job: BackgroundJob) -> None:
    """Run a background job; if it fails, log it and start it again after a pause.

    Stops for good once the task is being cancelled, even when the job turned the
    cancellation into another exception (a driver cancelled mid-query may) or returned.
    """
    task = asyncio.current_task()
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            if task is not None and task.cancelling():
                return
            logger.exception("background job failed", extra={"job": repr(job)})
        if task is not None and task.cancelling():
            return
        await asyncio.sleep(BACKGROUND_RETRY_S)


def asgi_app(config: HomeserverConfig) -> Any:
    """The app uvicorn serves: the homeserver is built in the lifespan, once per worker."""
    holder: dict[str, Homeserver] = {}

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        async with running_homeserver(config) as hs:
            holder["hs"] = hs
            await hs.db.prepare_statements()
            # What start-up built lives as long as the process: keep full collections from
            # walking it again and again (each one stalls every request in flight).
            gc.collect()
            gc.freeze()
            logger.info("homeserver started", extra={"server_name": config.server_name})
            yield

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _run_lifespan(lifespan, scope, receive, send)
            return
        await holder["hs"].app(scope, receive, send)

    def begin_shutdown() -> None:
        hs = holder.get("hs")
        if hs is not None:
            hs.begin_shutdown()

    app.begin_shutdown = begin_shutdown  # type: ignore[attr-defined]  # called by cli.py
    return app


async def _run_lifespan(lifespan: Any, scope: Any, receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "lifespan.startup"
    try:
        cm = lifespan(None)
        await cm.__aenter__()
    except Exception as e:
        logger.exception("start-up failed")
        await send({"type": "lifespan.startup.failed", "message": str(e)})
        return
    await send({"type": "lifespan.startup.complete"})
    message = await receive()
    assert message["type"] == "lifespan.shutdown"
    await cm.__aexit__(None, None, None)
    await send({"type": "lifespan.shutdown.complete"})
