"""Builds the homeserver: database, stores, bus, services and the ASGI app.

The one module of ``homeserver/`` that imports routes; everything is wired by plain
constructor injection here.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount

from homeserver.accounts.account_data import AccountDataService
from homeserver.accounts.ignored import IgnoreLists
from homeserver.accounts.profile import ProfileService
from homeserver.accounts.service import AccountService
from homeserver.accounts.threepids import ThreepidService
from homeserver.accounts.tokens import AuthService
from homeserver.accounts.uia import UiaService
from homeserver.accounts.user_directory import UserDirectoryService
from homeserver.core.clock import Clock, SystemClock
from homeserver.core.config import HomeserverConfig
from homeserver.core.errors import MatrixError
from homeserver.core.ids import UserID
from homeserver.core.ratelimit import RateLimiter
from homeserver.crypto.signing import SigningKey, load_or_create_signing_key
from homeserver.e2ee.device_lists import DeviceListService
from homeserver.e2ee.federation_keys import FederationKeyService
from homeserver.e2ee.key_backup import KeyBackupService
from homeserver.e2ee.keys import E2eKeyService
from homeserver.e2ee.to_device import ToDeviceService
from homeserver.ephemeral.presence import PresenceService
from homeserver.ephemeral.receipts import EphemeralSource, ReceiptService
from homeserver.ephemeral.typing import TypingService
from homeserver.federation.discovery import ServerResolver
from homeserver.federation.services import build_federation
from homeserver.filters.service import FilterService
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from homeserver.push.actions import PushActionGenerator
from homeserver.push.notifications import NotificationService, PushActionPruner
from homeserver.push.pushers import PusherService, Unsubscriber
from homeserver.push.sender import PusherSender
from homeserver.push.service import AccountDataWithPushRules, PushRuleService
from homeserver.push.unread import UnreadCountService
from homeserver.rooms.create import RoomCreator
from homeserver.rooms.directory import DirectoryService
from homeserver.rooms.membership import MembershipService
from homeserver.rooms.relations import Aggregations, RelationsService
from homeserver.rooms.sender import EventSender
from homeserver.rooms.service import RoomService
from homeserver.rooms.upgrade import RoomUpgrader
from homeserver.rooms.visibility import Visibility
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.accounts import AccountStore
from homeserver.storage.database import Database
from homeserver.storage.device_lists import DeviceListStore
from homeserver.storage.e2e_keys import E2eKeyStore
from homeserver.storage.events import EventStore
from homeserver.storage.filters import FilterStore
from homeserver.storage.key_backup import KeyBackupStore
from homeserver.storage.media import MediaStore
from homeserver.storage.migrate import upgrade_head
from homeserver.storage.presence import PresenceStore
from homeserver.storage.push import PushStore
from homeserver.storage.receipts import ReceiptStore
from homeserver.storage.registration_tokens import RegistrationTokenStore
from homeserver.storage.relations import RelationStore
from homeserver.storage.rooms import RoomStore
from homeserver.storage.threepids import ThreepidStore
from homeserver.storage.to_device import ToDeviceStore
from homeserver.storage.typing_notifications import TypingStore
from homeserver.storage.uia import UiaStore
from homeserver.storage.user_directory import UserDirectoryStore
from homeserver.sync.service import SyncService
from homeserver.wakeups.bus import InMemoryBus
from homeserver.wakeups.notifier import Notifier
from homeserver.web.cors import CorsMiddleware
from homeserver.web.edge import http_error_handler, internal_error_handler, matrix_error_handler
from homeserver.websocket import WebSocketService
from media_repo.backends import build_backend, spool_dir
from media_repo.preview import UrlPreviewer
from media_repo.service import MediaService

logger = logging.getLogger(__name__)

# A background job runs for the life of the worker (a loop with its own sleeps); one that
# raises is logged and restarted after this pause.
BackgroundJob = Callable[[], Awaitable[None]]
BACKGROUND_RETRY_S = 5.0
STOP_ATTEMPTS = 20
STOP_WAIT_S = 0.5


class Homeserver:
    """Everything one worker runs, built once from the config."""

    def __init__(
        self,
        config: HomeserverConfig,
        db: Database,
        signing_key: SigningKey,
        clock: Clock,
        outbound: Outbound | None = None,
        server_resolver: ServerResolver | None = None,
    ) -> None:
        self.config = config
        # Every request to a URL someone else chose (previews, push gateways, other homeservers)
        # goes through it.
        self.outbound = outbound or Outbound(AddressPolicy(config.outbound.allow_addresses))
        self.db = db
        self.clock = clock
        self.signing_key = signing_key
        self.server_name = config.server_name
        # Jobs the services register (timers, sweepers); started by running_homeserver.
        self.background_jobs: list[BackgroundJob] = []
        self.bus = InMemoryBus()
        self.notifier = Notifier(self.bus)
        self.account_store = AccountStore(db)
        self.auth = AuthService(self.account_store, clock, config.auth)
        self.ratelimiter = RateLimiter(config.rate_limits, clock)
        self.registration_tokens = RegistrationTokenStore(db)
        self.uia = UiaService(
            UiaStore(db),
            self.account_store,
            self.registration_tokens,
            self.auth,
            self.ratelimiter,
            clock,
            config.server_name,
            config.registration,
        )
        self.accounts = AccountService(
            self.account_store,
            self.auth,
            self.uia,
            self.ratelimiter,
            clock,
            config.server_name,
            config.registration,
        )
        self.threepids = ThreepidService(
            ThreepidStore(db),
            PushStore(db),
            self.uia,
            self.ratelimiter,
            clock,
            config.email,
            config.base_url,
        )
        self.uia.set_email_identity(self.threepids)
        self.accounts.email_identity = self.threepids
        # Server identity, discovery, signed requests both ways (issue 18); built early, as
        # services that answer about remote users ask through it.
        self.federation = build_federation(
            config, db, signing_key, clock, self.outbound, server_resolver
        )
        remote = self.federation.queries if config.federation.enabled else None
        self.profiles = ProfileService(self.account_store, config.server_name, remote=remote)
        self.filters = FilterService(FilterStore(db))
        self._build_rooms(config, db, signing_key, clock)
        self._build_user_data(config, db, clock)
        self._build_status(config, db, clock)
        self._build_push(config, db, clock, signing_key)
        self._build_e2e(config, db)
        self._build_websocket(config)
        self._build_media(config, db, clock)
        self.app = create_app(self)

    def _build_rooms(
        self, config: HomeserverConfig, db: Database, signing_key: SigningKey, clock: Clock
    ) -> None:
        self.event_store = EventStore(db)
        self.room_store = RoomStore(db, self.event_store)
        self.event_sender = EventSender(
            self.event_store, self.room_store, self.notifier, clock, config.server_name, signing_key
        )
        self.visibility = Visibility(self.event_store, self.room_store)
        self.memberships = MembershipService(
            self.event_sender, self.room_store, config.server_name, self._profile_of
        )
        self.directory = DirectoryService(self.room_store, self.event_store, config.server_name)
        self.room_creator = RoomCreator(
            self.event_sender,
            self.room_store,
            self.memberships,
            self.directory,
            config.server_name,
            config.rooms.default_room_version,
            clock,
        )
        self.relation_store = RelationStore(db)
        self.aggregations = Aggregations(self.relation_store, self.event_store, clock)
        self.rooms = RoomService(
            self.event_sender,
            self.event_store,
            self.room_store,
            self.visibility,
            clock,
            aggregations=self.aggregations,
        )
        self.relations = RelationsService(
            self.relation_store, self.event_store, self.rooms, self.visibility
        )
        self.room_upgrader = RoomUpgrader(
            self.event_sender, self.event_store, self.room_store, self.memberships, clock
        )
        self.sync = SyncService(
            db, self.event_store, self.room_store, self.rooms, self.visibility, self.notifier, clock
        )
        self.profiles.on_profile_changed = self._on_profile_changed
        self.accounts.on_deactivated = self._on_deactivated

    def _build_user_data(self, config: HomeserverConfig, db: Database, clock: Clock) -> None:
        """Account data (with tags and ignored users), to-device messages, user directory."""
        self.account_data = AccountDataService(AccountDataStore(db), self.room_store, self.notifier)
        self.sync.add_global_source("account_data", self.account_data)
        self.sync.add_room_source("account_data", self.account_data)
        # Cached (dropped on every worker by the account-data wake-up): read by every sync
        # and, for every member of a room, as events are sent.
        self.ignore_lists = IgnoreLists(AccountDataStore(db), self.bus)
        self.sync.set_ignored_users(self.ignore_lists)
        self.rooms.set_ignored_users(self.ignore_lists)
        self.aggregations.set_ignored_users(self.ignore_lists)
        self.to_device = ToDeviceService(
            ToDeviceStore(db), self.notifier, clock, config.server_name
        )
        self.sync.add_global_source("to_device", self.to_device)
        self.accounts.on_devices_deleted = self._on_devices_deleted
        self.user_directory = UserDirectoryService(UserDirectoryStore(db))

    def _build_status(self, config: HomeserverConfig, db: Database, clock: Clock) -> None:
        """Presence, typing, receipts and read markers, unread counts (issue 3)."""
        self.presence = PresenceService(
            PresenceStore(db), self.notifier, clock, config.presence, self.event_store
        )
        self.sync.add_global_source("presence", self.presence)
        if self.presence.enabled:
            self.background_jobs.append(self.presence.run_sweeper)
        self.typing = TypingService(TypingStore(db), self.room_store, self.notifier, clock)
        self.background_jobs.append(self.typing.run_expiry)
        receipt_store = ReceiptStore(db)
        self.receipts = ReceiptService(
            receipt_store,
            self.event_store,
            self.room_store,
            self.account_data,
            self.notifier,
            clock,
        )
        self.sync.add_room_source("ephemeral", EphemeralSource(self.typing, self.receipts))
        self.unread = UnreadCountService(
            PushStore(db),
            self.ignore_lists,
            self.event_store,
            receipt_store,
            clock,
            config.push.action_retention_ms,
        )
        self.sync.set_unread_counts(self.unread)

    def _build_e2e(self, config: HomeserverConfig, db: Database) -> None:
        """End-to-end encryption: device and cross-signing keys, device lists, key backup
        (issue 7)."""
        self.device_lists = DeviceListService(DeviceListStore(db), self.notifier, self.event_store)
        self.e2e_keys = E2eKeyService(
            E2eKeyStore(db),
            self.device_lists,
            self.uia,
            config.server_name,
            self.notifier,
            remote=self.federation.queries if config.federation.enabled else None,
        )
        self.sync.add_extension(self.e2e_keys)
        self.federation_keys = FederationKeyService(
            self.e2e_keys, self.device_lists, config.server_name
        )
        self.key_backup = KeyBackupService(KeyBackupStore(db))

    async def _on_deactivated(self, user_id: UserID) -> None:
        """A deactivated account leaves its rooms and lets go of its e-mail addresses."""
        await self.memberships.leave_all(user_id)
        await self.threepids.delete_all(user_id)

    async def _on_devices_deleted(self, user_id: UserID, device_ids: list[str]) -> None:
        """Deleted devices take their to-device messages and keys with them."""
        await self.to_device.delete_for_devices(user_id, device_ids)
        await self.e2e_keys.delete_for_devices(user_id, device_ids)
        await self.pushers.delete_for_devices(user_id, device_ids)

    def _build_push(
        self, config: HomeserverConfig, db: Database, clock: Clock, signing_key: SigningKey
    ) -> None:
        """Push rules (evaluated as events are persisted), pushers, the pusher sender and
        missed-message e-mails (issue 6)."""
        push_store = PushStore(db)
        self.push_rules = PushRuleService(push_store, self.account_data, self.bus)
        self.event_sender.set_push_actions(
            PushActionGenerator(
                self.push_rules, push_store, self.event_store, config.server_name, self.ignore_lists
            )
        )
        self.sync.add_global_source(
            "account_data", AccountDataWithPushRules(self.account_data, self.push_rules)
        )
        unsubscriber = Unsubscriber(bytes(signing_key.encode()))
        self.pushers = PusherService(
            push_store,
            config.push,
            config.email,
            clock,
            unsubscriber,
            self.threepids,
            self.outbound,
        )
        self.push_notifications = NotificationService(
            push_store, self.event_store, self.rooms, self.ignore_lists
        )
        self.pusher_sender = PusherSender(
            db,
            push_store,
            self.event_store,
            self.room_store,
            self.unread,
            clock,
            self.bus,
            config=config.push,
            email=config.email,
            presence=config.presence,
            base_url=config.base_url,
            unsubscriber=unsubscriber,
            ignored=self.ignore_lists,
            outbound=self.outbound,
        )
        self.background_jobs.append(self.pusher_sender.run)
        self.push_action_pruner = PushActionPruner(push_store, clock, config.push)
        self.background_jobs.append(self.push_action_pruner.run)
        self.push_gateway_routes: list[BaseRoute] = []
        if config.push.gateway_config is not None:
            from push_gateway.app import Gateway
            from push_gateway.config import load_gateway_config

            gateway = Gateway(
                load_gateway_config(Path(config.push.gateway_config)), outbound=self.outbound
            )
            self.push_gateway_routes = gateway.routes

            async def close_gateway_at_exit() -> None:  # a "job" that only waits to close
                try:
                    await asyncio.Event().wait()
                finally:
                    await gateway.aclose()

            self.background_jobs.append(close_gateway_at_exit)

    def _build_websocket(self, config: HomeserverConfig) -> None:
        """The WebSocket transport: built last, it answers requests with the other services."""
        self.websocket = WebSocketService(
            config.websocket,
            self.auth,
            self.sync,
            self.filters,
            self.rooms,
            self.ratelimiter,
            self.typing,
            self.receipts,
            self.presence,
        )

    def _build_media(self, config: HomeserverConfig, db: Database, clock: Clock) -> None:
        """The media repository (issue 5): storage backend, uploads, thumbnails, previews."""
        self.media = MediaService(
            MediaStore(db),
            build_backend(config.media.storage, config.data_path),
            clock,
            config.server_name,
            config.media,
            spool_dir(config.media.storage, config.data_path),
        )
        self.url_previews = UrlPreviewer(config.media.url_preview, self.media, self.outbound)

    async def close(self) -> None:
        await self.media.close()
        await self.federation.aclose()

    async def _on_profile_changed(
        self, user_id: UserID, displayname: str | None, avatar_url: str | None
    ) -> None:
        await self.memberships.update_profile_everywhere(user_id)

    async def _profile_of(self, user_id: str) -> tuple[str | None, str | None] | None:
        profile = await self.profiles.get_profile(UserID(user_id))
        if profile is None:
            return None
        return profile.displayname, profile.avatar_url

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
            # E-mail addresses can be added and removed once the server can mail.
            "m.3pid_changes": {"enabled": self.threepids.enabled},
            "m.get_login_token": {"enabled": False},
        }


def create_app(hs: Homeserver) -> Starlette:
    from client_api import routes as client_routes
    from federation import routes as federation_routes
    from media_repo import routes as media_routes

    federation: list[BaseRoute] = [Mount("/_matrix/key", routes=federation_routes.key_routes)]
    if hs.config.federation.enabled:
        federation.append(Mount("/_matrix/federation", routes=federation_routes.federation_routes))
    app = Starlette(
        routes=[
            *federation,
            Mount("/_matrix/media", routes=media_routes.media_routes),
            # Before /_matrix/client: a Mount that matches a prefix never falls through.
            Mount("/_matrix/client/v1/media", routes=media_routes.client_media_routes),
            Mount("/_matrix/client", routes=client_routes.client_routes),
            *client_routes.root_routes,
            *hs.push_gateway_routes,
        ],
        middleware=[Middleware(CorsMiddleware)],
        exception_handlers={
            MatrixError: matrix_error_handler,
            HTTPException: http_error_handler,
            Exception: internal_error_handler,
        },
    )
    app.state.homeserver = hs
    return app


@asynccontextmanager
async def running_homeserver(
    config: HomeserverConfig,
    *,
    clock: Clock | None = None,
    migrate: bool = True,
    outbound: Outbound | None = None,
    server_resolver: ServerResolver | None = None,
) -> AsyncIterator[Homeserver]:
    """Open the database (migrated to head), build the services, close them on exit."""
    config.data_path.mkdir(parents=True, exist_ok=True)
    db = Database(config.database_url, pool_size=config.database.pool_size)
    try:
        if migrate:
            await upgrade_head(db.engine)
        signing_key = load_or_create_signing_key(config.signing_key_file)
        hs = Homeserver(config, db, signing_key, clock or SystemClock(), outbound, server_resolver)
        # Plain tasks, not a task group: the caller may leave this context from another task
        # than the one that entered it (test fixtures, lifespans).
        tasks = [asyncio.create_task(_run_forever(job)) for job in hs.background_jobs]
        try:
            yield hs
        finally:
            await _stop(tasks)
            await hs.close()
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
            # walking it again and again (they were the DM latency's tail, ~100 ms each).
            gc.collect()
            gc.freeze()
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
