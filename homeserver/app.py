"""Builds the homeserver: database, stores, bus, services and the ASGI app.

The one module of ``homeserver/`` that imports routes; everything is wired by plain
constructor injection here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount

from homeserver.auth import AuthService
from homeserver.bus import InMemoryBus
from homeserver.clock import Clock, SystemClock
from homeserver.config import HomeserverConfig
from homeserver.errors import MatrixError
from homeserver.keys import SigningKey, load_or_create_signing_key
from homeserver.migrate import upgrade_head
from homeserver.notifier import Notifier
from homeserver.storage.accounts import AccountStore
from homeserver.storage.database import Database
from homeserver.web import http_error_handler, internal_error_handler, matrix_error_handler

logger = logging.getLogger(__name__)


class Homeserver:
    """Everything one worker runs, built once from the config."""

    def __init__(self, config: HomeserverConfig, db: Database, signing_key: SigningKey,
                 clock: Clock) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.signing_key = signing_key
        self.server_name = config.server_name
        self.bus = InMemoryBus()
        self.notifier = Notifier(self.bus)
        self.account_store = AccountStore(db)
        self.auth = AuthService(self.account_store, clock, config.auth)
        self.app = create_app(self)

    def capabilities(self) -> dict[str, Any]:
        from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS

        return {
            "m.change_password": {"enabled": True},
            "m.room_versions": {
                "default": self.config.rooms.default_room_version,
                "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS},
            },
            "m.set_displayname": {"enabled": True},
            "m.set_avatar_url": {"enabled": True},
            "m.3pid_changes": {"enabled": False},
            "m.get_login_token": {"enabled": False},
        }


def create_app(hs: Homeserver) -> Starlette:
    from client_api import routes as client_routes

    app = Starlette(
        routes=[Mount("/_matrix/client", routes=client_routes.client_routes),
                *client_routes.root_routes],
        middleware=[Middleware(
            CORSMiddleware, allow_origins=["*"],
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["X-Requested-With", "Content-Type", "Authorization", "Date"])],
        exception_handlers={MatrixError: matrix_error_handler,
                            HTTPException: http_error_handler,
                            Exception: internal_error_handler},
    )
    app.state.homeserver = hs
    return app


@asynccontextmanager
async def running_homeserver(config: HomeserverConfig, *, clock: Clock | None = None,
                             migrate: bool = True) -> AsyncIterator[Homeserver]:
    """Open the database (migrated to head), build the services, close them on exit."""
    config.data_path.mkdir(parents=True, exist_ok=True)
    db = Database(config.database_url, pool_size=config.database.pool_size)
    try:
        if migrate:
            await upgrade_head(db.engine)
        signing_key = load_or_create_signing_key(config.signing_key_file)
        yield Homeserver(config, db, signing_key, clock or SystemClock())
    finally:
        await db.close()


def asgi_app(config: HomeserverConfig) -> Any:
    """The app uvicorn serves: the homeserver is built in the lifespan, once per worker."""
    holder: dict[str, Homeserver] = {}

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        async with running_homeserver(config) as hs:
            holder["hs"] = hs
            logger.info("homeserver started", extra={"server_name": config.server_name})
            yield

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _run_lifespan(lifespan, scope, receive, send)
            return
        await holder["hs"].app(scope, receive, send)

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
