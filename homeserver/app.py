"""The composition root: builds stores, bus, services and the ASGI app from the config.

Everything is wired by plain constructor injection here, in dependency order; the routes
and the ASGI app on top are ``homeserver/routing.py``, the one module of ``homeserver/`` that
imports routes. Running it (database, background jobs,
uvicorn's lifespan) is ``homeserver/lifecycle.py``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from homeserver.accounts.account_data import AccountDataService
from homeserver.accounts.email_validation import EmailValidation
from homeserver.accounts.ignored import IgnoreLists
from homeserver.accounts.jwt_login import JwtLogin
from homeserver.accounts.login_tokens import LoginTokens
from homeserver.accounts.openid import OpenIdService
from homeserver.accounts.profile import ProfileService
from homeserver.accounts.service import AccountService
from homeserver.accounts.sso import SsoService
from homeserver.accounts.threepids import ThreepidService
from homeserver.accounts.tokens import AuthService
from homeserver.accounts.uia import UiaService
from homeserver.accounts.user_directory import UserDirectoryService
from homeserver.admin.federation import AdminFederation
from homeserver.admin.jobs import AdminJobs
from homeserver.admin.media import AdminMedia
from homeserver.admin.room_tasks import AdminRoomTasks
from homeserver.admin.rooms import AdminRooms
from homeserver.admin.server import AdminServer
from homeserver.admin.sessions import SessionRecorder
from homeserver.admin.shared_secret import SharedSecretRegistration
from homeserver.admin.users import AdminUsers
from homeserver.appservice.client import AppServiceClient
from homeserver.appservice.registration import AppServices, load_registrations
from homeserver.appservice.sender import AppServiceSender
from homeserver.appservice.service import AppServiceQueries
from homeserver.caches.invalidations import (
    SYNC_MEMBERSHIPS,
    SYNC_MEMBERSHIPS_OF_ROOM,
    CacheInvalidations,
)
from homeserver.core.clock import Clock
from homeserver.core.config import HomeserverConfig
from homeserver.core.leases import Singletons
from homeserver.core.ratelimit import RateLimiter
from homeserver.core.redis import connect as connect_redis
from homeserver.crypto.derived_keys import SERVER_SECRET_FILE, load_or_create_server_secret
from homeserver.crypto.signing import SigningKey
from homeserver.e2ee.device_lists import DeviceListService
from homeserver.e2ee.federation_keys import FederationKeyService
from homeserver.e2ee.key_backup import KeyBackupService
from homeserver.e2ee.keys import E2eKeyService
from homeserver.e2ee.to_device import ToDeviceService
from homeserver.ephemeral.presence import PresenceService
from homeserver.ephemeral.receipts import EphemeralSource, ReceiptService
from homeserver.ephemeral.typing import TypingService
from homeserver.federation.acl import RoomAcls
from homeserver.federation.auth import FederationAuthenticator
from homeserver.federation.backfill import RoomBackfill
from homeserver.federation.client import FederationClient, FederationError, ssl_context
from homeserver.federation.discovery import (
    DnsSrvLookup,
    HttpsWellKnownFetch,
    ServerResolver,
    WellKnownResolver,
)
from homeserver.federation.edus import InboundEdus
from homeserver.federation.keyring import Keyring
from homeserver.federation.local_keys import LocalKeys, load_old_verify_keys, old_keys_path
from homeserver.federation.membership import FederatedMembership
from homeserver.federation.outbox import FederationOutbox
from homeserver.federation.policy import ServerPolicy
from homeserver.federation.queries import FederationQueries
from homeserver.federation.remote_devices import RemoteDeviceLists
from homeserver.federation.remote_join import RemoteRooms
from homeserver.federation.remote_media import FederationMediaFetcher
from homeserver.federation.room_reads import RoomReads
from homeserver.federation.sender import FederationSender
from homeserver.federation.transactions import TransactionService
from homeserver.filters.service import FilterService
from homeserver.metrics.listener import MetricsListener
from homeserver.metrics.registry import Metrics
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from homeserver.oauth.service import OAuthService
from homeserver.push.actions import PushActionGenerator
from homeserver.push.notifications import NotificationService, PushActionPruner
from homeserver.push.pushers import LEGACY_UNSUBSCRIBE_GRACE_MS, PusherService, Unsubscriber
from homeserver.push.sender import PusherSender
from homeserver.push.service import AccountDataWithPushRules, PushRuleService
from homeserver.push.unread import UnreadCountService
from homeserver.rooms.aggregations import Aggregations
from homeserver.rooms.create import RoomCreator
from homeserver.rooms.delayed import DelayedEventService
from homeserver.rooms.directory import DirectoryService
from homeserver.rooms.hierarchy import SpaceHierarchyService
from homeserver.rooms.incoming import IncomingEvents
from homeserver.rooms.membership import MembershipService
from homeserver.rooms.mutual import MutualRooms
from homeserver.rooms.relations import RelationsService
from homeserver.rooms.remote_directory import RemoteDirectories
from homeserver.rooms.remote_hierarchy import RemoteHierarchies
from homeserver.rooms.reports import ReportService
from homeserver.rooms.resolution import resolve_room_state
from homeserver.rooms.send import SendService
from homeserver.rooms.sender import EventSender
from homeserver.rooms.service import RoomService
from homeserver.rooms.summary import RoomSummaryService
from homeserver.rooms.thread_subscriptions import ThreadSubscriptionService
from homeserver.rooms.timestamps import TimestampService
from homeserver.rooms.upgrade import RoomUpgrader
from homeserver.rooms.visibility import Visibility
from homeserver.search.indexer import SearchIndexer
from homeserver.search.service import SearchService
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.accounts import AccountStore
from homeserver.storage.admin import AdminStore
from homeserver.storage.admin_federation import AdminFederationStore
from homeserver.storage.admin_jobs import AdminJobsStore
from homeserver.storage.admin_media import AdminMediaStore
from homeserver.storage.admin_rooms import AdminRoomStore
from homeserver.storage.admin_server import AdminServerStore
from homeserver.storage.appservice import AppServiceStore
from homeserver.storage.cache_invalidations import CacheInvalidationStore
from homeserver.storage.database import Database
from homeserver.storage.delayed_events import DelayedEventStore
from homeserver.storage.device_lists import DeviceListStore
from homeserver.storage.e2e_keys import E2eKeyStore
from homeserver.storage.event_times import EventTimeStore
from homeserver.storage.events import EventStore
from homeserver.storage.events.federation_reads import FederationReads
from homeserver.storage.events.remote_rooms import RemoteRoomWrites
from homeserver.storage.federation_queue import FederationQueueStore
from homeserver.storage.filters import FilterStore
from homeserver.storage.key_backup import KeyBackupStore
from homeserver.storage.leases import JobLeaseStore
from homeserver.storage.media import MediaStore
from homeserver.storage.media_retention import MediaAccessStore
from homeserver.storage.metrics import MetricsStore
from homeserver.storage.oauth import OAuthStore
from homeserver.storage.openid import LoginTokenStore, OpenIdStore
from homeserver.storage.presence import PresenceStore
from homeserver.storage.push import PushStore
from homeserver.storage.push_rules import PushRuleStore
from homeserver.storage.pushers import PusherStore
from homeserver.storage.receipts import ReceiptStore
from homeserver.storage.registration_tokens import RegistrationTokenStore
from homeserver.storage.relations import RelationStore
from homeserver.storage.remote_devices import RemoteDeviceStore
from homeserver.storage.reports import ReportStore
from homeserver.storage.rooms import RoomStore
from homeserver.storage.search import SearchStore
from homeserver.storage.server_keys import ServerKeyStore
from homeserver.storage.sliding_sync import SlidingSyncStore
from homeserver.storage.sso import SsoStore
from homeserver.storage.thread_subscriptions import ThreadSubscriptionStore
from homeserver.storage.threepids import ThreepidStore
from homeserver.storage.to_device import ToDeviceStore
from homeserver.storage.typing_notifications import TypingStore
from homeserver.storage.uia import UiaStore
from homeserver.storage.user_directory import UserDirectoryStore
from homeserver.sync.legacy import LegacySync
from homeserver.sync.service import SyncService
from homeserver.sync.sliding.extensions import ExtensionSources
from homeserver.sync.sliding.service import SlidingSyncService
from homeserver.voip.turn import TurnService
from homeserver.wakeups.bus import Bus, InMemoryBus
from homeserver.wakeups.notifier import Notifier
from homeserver.websocket import WebSocketService
from media_repo.access import AccessRecorder
from media_repo.backends import build_backend, spool_dir
from media_repo.preview import UrlPreviewer
from media_repo.retention import MediaRetention
from media_repo.service import MediaService

if TYPE_CHECKING:
    from homeserver.wakeups.redis_bus import RedisBus

# A background job runs for the life of the worker (a loop with its own sleeps);
# homeserver/lifecycle.py runs them, and restarts one that raises.
BackgroundJob = Callable[[], Awaitable[None]]


class Homeserver:
    """Everything one worker runs, built once from the config.

    Built in dependency order, each service from the ones before it: no setter or callback is
    wired after construction. Where two services need each other, one of them sees the other
    through a small protocol of its own (``ProfileListener``, ``UserData``, ``DeviceData``,
    ``EmailIdentity``) and is built second.
    """

    def begin_shutdown(self) -> None:
        """SIGTERM: long-polls answer now, WebSockets close (1001); the other requests in
        flight, writes among them, finish (uvicorn waits for them up to
        listen.shutdown_timeout_ms, then cancels what is left)."""
        self.websocket.shut_down()  # first: their streams then stop at their next answer
        self.notifier.close()

    def __init__(
        self,
        config: HomeserverConfig,
        db: Database,
        signing_key: SigningKey,
        clock: Clock,
        app_factory: Callable[[Homeserver], Starlette],
        outbound: Outbound | None = None,
        server_resolver: ServerResolver | None = None,
    ) -> None:
        """``app_factory`` builds the ASGI app on the services (``homeserver/routing.py``,
        which imports the routes); ``server_resolver`` replaces the discovery of other
        homeservers (tests)."""
        self.config = config
        # Every request to a URL someone else chose (previews, push gateways, other
        # homeservers) goes through it.
        self.outbound = outbound or Outbound(
            AddressPolicy(config.outbound.allow_addresses),
            ca_file=config.outbound.tls_ca_bundle,
        )
        self.db = db
        self.clock = clock
        self.signing_key = signing_key
        self.server_name = config.server_name
        # Jobs the services register (timers, sweepers); started by running_homeserver.
        self.background_jobs: list[BackgroundJob] = []
        # Jobs that run on one worker at a time, under a lease (docs/scaling.md, "Singletons").
        self.job_leases = JobLeaseStore(db)
        self.worker_id = (
            f"{config.worker.name}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        )
        self.singletons = Singletons(self.job_leases, self.worker_id)
        # Prometheus metrics (docs/metrics.md): the hot paths observe into it from the start.
        self.metrics = Metrics()
        # Redis when the workers share one (``redis.url``), else in memory (one process).
        self.redis_bus = _redis_bus(config)
        self.bus: Bus = self.redis_bus if self.redis_bus is not None else InMemoryBus()
        self.notifier = Notifier(self.bus, db.current_positions, db.persisted_upto)
        if db.positions is not None:
            db.positions.on_advance.append(self.notifier.advanced)
        if self.redis_bus is not None:
            self.background_jobs.append(self.redis_bus.run)
        # Redis, with several workers (redis.url): rate limits shared across them.
        self.redis = connect_redis(config)
        self.ratelimiter = RateLimiter(
            config.rate_limits, clock, self.redis, prefix=f"{config.server_name}:ratelimit:"
        )
        self._build_stores(db)
        self._build_cache_invalidations(config, db, clock)
        self._build_appservices(config, db, clock)
        # Server identity, discovery, signed requests both ways (issue 18): built first, as
        # the services that answer about remote users ask through it.
        self._build_federation(config, signing_key, clock, server_resolver)
        self._build_user_data(config)
        self._build_federation_rooms(config, clock)
        self._build_rooms(config, signing_key, clock)
        self._build_accounts(config, db, clock, signing_key)
        self._build_status(config, db, clock)
        self._build_transactions(config, db, clock)
        self.sync = SyncService(
            db,
            self.event_store,
            self.room_store,
            self.rooms,
            self.visibility,
            self.notifier,
            clock,
            global_sources={
                # m.push_rules is part of every initial sync's account data.
                "account_data": AccountDataWithPushRules(self.account_data, self.push_rules),
                "to_device": self.to_device,
                "presence": self.presence,
            },
            room_sources={
                "account_data": self.account_data,
                "ephemeral": EphemeralSource(self.typing, self.receipts),
            },
            extensions=[self.e2e_keys],
            unread=self.unread,
            ignored=self.ignore_lists,
            invite_permissions=self.account_data,
        )
        self.legacy_sync = LegacySync(
            self.sync,
            self.rooms,
            self.event_store,
            self.room_store,
            self.db,
            self.notifier,
            self.presence,
            self.account_data,
            self.receipts,
        )
        self.sliding_sync = self._build_sliding_sync(db, clock)
        # Last of the account services: deleting an account or a device reaches every
        # service that keeps something for it (sliding sync's connections too).
        self._build_account_service(config, clock)
        self._build_push_delivery(config, db, clock)
        self.websocket = WebSocketService(
            config.websocket,
            self.auth,
            self.sync,
            self.filters,
            self.sending,
            self.typing,
            self.receipts,
            self.presence,
            self.sliding_sync,
            self.delayed_events,
        )
        self._build_media(config, db, clock)
        self._build_admin(config, clock)
        self.metrics.watch(self.notifier, self.websocket, db, MetricsStore(db), clock)
        self.metrics_listener: MetricsListener | None = None
        if config.metrics.listen is not None:
            self.metrics_listener = MetricsListener(self.metrics, config.metrics.listen)
            self.background_jobs.append(self.metrics_listener.run)
        if self.singletons.jobs:
            self.background_jobs.append(self.singletons.run)
        self.app = app_factory(self)

    def has_background_job(self, job: BackgroundJob) -> bool:
        """Whether this worker runs ``job``, alone or as a singleton."""
        return job in self.background_jobs or any(
            s.job == job for s in self.singletons.jobs.values()
        )

    def _singleton(self, name: str, job: BackgroundJob) -> None:
        """``job`` on one worker at a time (the lease ``name``). SQLite has one worker: the
        job runs as it is."""
        if self.db.is_sqlite:
            self.background_jobs.append(job)
        else:
            self.singletons.add(name, job)

    def _build_cache_invalidations(
        self, config: HomeserverConfig, db: Database, clock: Clock
    ) -> None:
        """Caches every worker keeps (tokens, ignore lists, push rules, the memberships kept
        for syncs) agree through a persisted invalidation stream, read by every worker. One
        worker (SQLite) has nothing to agree with: its caches drop in place, as before."""
        self.cache_invalidations: CacheInvalidations | None = None
        if db.is_sqlite:
            return
        self.cache_invalidations = CacheInvalidations(
            CacheInvalidationStore(db),
            clock,
            redis=self.redis,
            channel=f"{config.server_name}:cache_invalidations",
        )
        self.cache_invalidations.register(
            SYNC_MEMBERSHIPS, self.room_store.forget_cached_user, self.room_store.forget_all_cached
        )
        self.cache_invalidations.register(
            SYNC_MEMBERSHIPS_OF_ROOM, self.room_store.forget_cached_room, lambda: None
        )
        self.background_jobs.append(self.cache_invalidations.run)
        self._singleton("cache_invalidation_pruner", self.cache_invalidations.run_pruner)

    def _build_stores(self, db: Database) -> None:
        self.account_store = AccountStore(db)
        self.admin_store = AdminStore(db)
        self.registration_tokens = RegistrationTokenStore(db)
        self.event_store = EventStore(db)
        self.room_store = RoomStore(db, self.event_store)
        self.relation_store = RelationStore(db)
        self.thread_subscription_store = ThreadSubscriptionStore(db)
        self.push_store = PushStore(db)
        self.push_rule_store = PushRuleStore(db)
        self.pusher_store = PusherStore(db)
        self.account_data_store = AccountDataStore(db)
        self.receipt_store = ReceiptStore(db)
        self.threepid_store = ThreepidStore(db)
        self.server_key_store = ServerKeyStore(db)
        self.federation_queue_store = FederationQueueStore(db)
        self.remote_device_store = RemoteDeviceStore(db)
        self.device_list_store = DeviceListStore(db)

    def _build_appservices(self, config: HomeserverConfig, db: Database, clock: Clock) -> None:
        """Application services (issue 22): their registrations, the client that reaches
        them, the queries clients' requests make of them, and the transaction sender."""
        self.appservices = AppServices(
            load_registrations(config.app_service_config_files, config.server_name)
        )
        # The operator wrote these URLs: they may be on loopback or a private network,
        # where bridges run (docs/appservices.md); still one transport, deadline and limit.
        appservice_outbound = Outbound(AddressPolicy(("0.0.0.0/0", "::/0")))
        timeout_s = config.appservice.request_timeout_ms / 1000
        self.appservice_client = AppServiceClient(appservice_outbound, timeout_s=timeout_s)
        self.appservice_queries = AppServiceQueries(
            self.appservices, self.appservice_client, self.account_store
        )
        self.appservice_sender = AppServiceSender(
            db,
            AppServiceStore(db),
            self.appservices,
            AppServiceClient(appservice_outbound, timeout_s=timeout_s),
            clock,
            self.bus,
            config.appservice,
        )
        if self.appservices:
            # Per worker: each service's queue has a lease of its own (storage/appservice.py).
            self.background_jobs.append(self.appservice_sender.run)

    def _build_federation(
        self,
        config: HomeserverConfig,
        signing_key: SigningKey,
        clock: Clock,
        server_resolver: ServerResolver | None,
    ) -> None:
        """Our server keys, other servers' keys (the keyring), discovery, the signing client,
        the authentication of requests from other servers, and the queries we ask of them."""
        fed = config.federation
        self.federation_policy = ServerPolicy(fed.enabled, fed.allow_servers, fed.deny_servers)
        self.local_keys = LocalKeys(
            config.server_name,
            signing_key,
            load_old_verify_keys(old_keys_path(config.signing_key_file)),
            clock,
            fed.key_validity_ms,
        )
        tls = ssl_context(fed.tls_ca_bundle)
        timeout_s = fed.request_timeout_ms / 1000
        # Redirects of the well-known are followed (spec), each hop checked like the first.
        self.well_known_client = self.outbound.client(
            timeout_s=timeout_s, max_redirects=5, verify=tls, user_agent="homeserver"
        )
        self.server_resolver = server_resolver or ServerResolver(
            WellKnownResolver(HttpsWellKnownFetch(self.well_known_client), clock), DnsSrvLookup()
        )
        self.federation_client = FederationClient(
            self.local_keys,
            self.server_resolver,
            self.outbound,
            self.federation_policy,
            tls=tls,
            timeout_s=timeout_s,
        )
        # Other servers' media for our clients; its redirects go to URLs the remote chose.
        self.media_redirect_client = self.outbound.client(
            timeout_s=timeout_s, max_redirects=5, verify=tls, user_agent="homeserver"
        )
        self.remote_media_fetcher = (
            FederationMediaFetcher(self.federation_client, self.media_redirect_client)
            if fed.enabled
            else None
        )
        self.keyring = Keyring(
            self.local_keys,
            self.server_key_store,
            self.federation_client,
            self.federation_policy,
            clock,
            trusted_key_servers=fed.trusted_key_servers,
            denied_verify_keys=fed.denied_verify_keys,
        )
        self.federation_auth = FederationAuthenticator(
            config.server_name, self.keyring, self.federation_policy, clock
        )
        self.federation_queries = FederationQueries(self.federation_client)
        # Services that answer about remote users ask their servers only with federation on.
        self.remote_queries = self.federation_queries if fed.enabled else None
        # Our users' EDUs for other servers (typing, receipts, presence, device lists,
        # to-device), queued in the database; the sender is woken when one is queued.
        self.federation_wake = asyncio.Event()
        self.edu_outbox = (
            FederationOutbox(
                self.federation_queue_store,
                config.server_name,
                clock,
                self.federation_wake.set,
            )
            if fed.enabled
            else None
        )

    def _build_federation_rooms(self, config: HomeserverConfig, clock: Clock) -> None:
        """Our rooms across servers (issue 18): server ACLs, the reads other servers make of
        our rooms, remote users joining, leaving, knocking on them and being invited."""
        self.room_acls = RoomAcls(self.event_store)
        self.federation_reads = FederationReads(self.db)
        self.room_reads = RoomReads(
            self.event_store, self.room_store, self.federation_reads, self.room_acls
        )
        # The receipt checks of other servers' events onto the room graph (issue 17).
        self.incoming_events = IncomingEvents(
            self.event_store,
            self.room_store,
            self.notifier,
            self.keyring,  # signatures: the keys of the servers concerned
            resolve=resolve_room_state,
        )
        self.federated_memberships = FederatedMembership(
            self.event_store,
            self.room_store,
            self.federation_reads,
            self.room_acls,
            self.keyring,
            self.incoming_events,
            clock,
            config.server_name,
            self.signing_key,
            RemoteRoomWrites(self.db),
            self.notifier,
            self.account_store,
            invite_permissions=self.account_data,
        )
        # Our users' memberships in other servers' rooms: joins, declined invites, invites.
        self.remote_rooms = RemoteRooms(
            self.federation_client,
            self.keyring,
            self.event_store,
            self.room_store,
            self.notifier,
            clock,
            config.server_name,
            self.signing_key,
            RemoteRoomWrites(self.db),
        )

    def _build_user_data(self, config: HomeserverConfig) -> None:
        """Account data, ignore lists and push rules: the room send path reads them."""
        self.account_data = AccountDataService(
            self.account_data_store, self.room_store, self.notifier, self.cache_invalidations
        )
        # Cached (dropped on every worker by the account-data wake-up): read by every sync
        # and, for every member of a room, as events are sent.
        self.ignore_lists = IgnoreLists(self.account_data_store, self.bus, self.cache_invalidations)
        self.push_rules = PushRuleService(
            self.push_rule_store, self.account_data, self.bus, self.cache_invalidations
        )

    def _build_rooms(self, config: HomeserverConfig, signing_key: SigningKey, clock: Clock) -> None:
        server_name = config.server_name
        self.event_sender = EventSender(
            self.event_store,
            self.room_store,
            self.notifier,
            clock,
            server_name,
            signing_key,
            # Push rules are evaluated as events are persisted (issue 6).
            PushActionGenerator(
                self.push_rules,
                self.push_rule_store,
                self.event_store,
                server_name,
                self.ignore_lists,
            ),
            # The states of several forward extremities become one (issue 17).
            resolve=resolve_room_state,
            observe_persist=self.metrics.event_persist.observe,
        )
        self.visibility = Visibility(self.event_store, self.room_store)
        self.memberships = MembershipService(
            self.event_sender,
            self.room_store,
            server_name,
            # Unknown users in an application service's namespace are asked of it.
            self.appservice_queries,
            self.remote_rooms if config.federation.enabled else None,
            self.event_store,
            self.federation_reads,
            invite_permissions=self.account_data,
            blocks=self.admin_store,
            invalidations=self.cache_invalidations,
        )
        self.profiles = ProfileService(
            self.account_store,
            server_name,
            self.memberships,
            self.remote_queries,
            local=self.appservice_queries,
        )
        self.directory = DirectoryService(
            self.room_store,
            self.event_store,
            server_name,
            self.appservice_queries,
            remote=self.remote_queries,
        )
        self.remote_directories = (
            RemoteDirectories(self.federation_client, clock, FederationError)
            if config.federation.enabled
            else None
        )
        self.room_summaries = RoomSummaryService(self.event_store, self.room_store, self.directory)
        self.space_hierarchy = SpaceHierarchyService(
            self.event_store,
            self.room_summaries,
            self.room_store,
            self.federation_reads,
            server_name,
            remote=(
                RemoteHierarchies(self.federation_client, clock, FederationError, server_name)
                if config.federation.enabled
                else None
            ),
        )
        self.turn = TurnService(config.voip, clock)
        self.openid = OpenIdService(OpenIdStore(self.db), clock, self.server_name)
        self.mutual_rooms = MutualRooms(self.room_store)
        self.reports = ReportService(
            ReportStore(self.db),
            self.room_store,
            self.event_store,
            self.account_store,
            self.ratelimiter,
            clock,
            server_name,
        )
        self.room_creator = RoomCreator(
            self.event_sender,
            self.room_store,
            self.memberships,
            self.directory,
            server_name,
            config.rooms.default_room_version,
            clock,
        )
        self.aggregations = Aggregations(
            self.relation_store, self.event_store, clock, self.ignore_lists
        )
        self.rooms = RoomService(
            self.event_sender,
            self.event_store,
            self.room_store,
            self.visibility,
            clock,
            self.ignore_lists,
            self.aggregations,
            # /messages reaching a gap asks the room's other servers (issue 18).
            RoomBackfill(
                self.federation_client,
                self.incoming_events,
                self.federation_reads,
                clock,
                server_name,
            ),
            guests=self.account_store,
            server_name=server_name,
        )
        self.timestamps = TimestampService(
            EventTimeStore(self.db), self.event_store, self.rooms, self.visibility
        )
        self.relations = RelationsService(
            self.relation_store, self.event_store, self.rooms, self.visibility
        )
        self.thread_subscriptions = ThreadSubscriptionService(
            self.thread_subscription_store, self.rooms, self.notifier
        )
        search_store = SearchStore(self.db)
        if self.db.is_sqlite:  # SQLite's index is written in batches (PostgreSQL's per row)
            self.background_jobs.append(SearchIndexer(search_store, self.bus).run)
        self.search = SearchService(
            search_store,
            self.event_store,
            self.room_store,
            self.rooms,
            self.visibility,
            self.ignore_lists,
        )
        self.room_upgrader = RoomUpgrader(
            self.event_sender, self.event_store, self.room_store, self.memberships, clock
        )
        self.presence = PresenceService(
            PresenceStore(self.db),
            self.notifier,
            clock,
            config.presence,
            self.event_store,
            server_name=server_name,
            outbox=self.edu_outbox,
        )
        if self.presence.enabled:
            if self.db.is_sqlite:
                self.background_jobs.append(self.presence.run_sweeper)
            else:
                # Each worker keeps its own connections online; one applies the timers.
                self.background_jobs.append(self.presence.run_keepalive)
                self._singleton("presence_timeouts", self.presence.run_timeouts)
            if self.edu_outbox is not None:
                self._singleton("presence_federation_pings", self.presence.run_federation_pings)
        # The one path of "a user sends an event" (HTTP and WebSocket).
        self.sending = SendService(
            self.event_sender,
            self.event_store,
            self.rooms,
            self.aggregations,
            self.ratelimiter,
            self.presence,
        )
        # Delayed events (MSC4140) are scheduled beside it and sent through it.
        self.delayed_events = DelayedEventService(
            DelayedEventStore(self.db), self.sending, self.rooms, self.ratelimiter, clock
        )
        self.background_jobs.append(self.delayed_events.run)

    def _build_accounts(
        self, config: HomeserverConfig, db: Database, clock: Clock, signing_key: SigningKey
    ) -> None:
        """Tokens, UIA, e-mail validation and addresses, end-to-end keys, pushers. The
        AccountService comes later (``_build_account_service``), after everything an
        account's deletion reaches."""
        server_name = config.server_name
        self.auth = AuthService(
            self.account_store, clock, config.auth, self.appservices, self.cache_invalidations
        )
        self.email_validation = EmailValidation(
            self.threepid_store, self.ratelimiter, clock, config.email, config.base_url
        )
        self.uia = UiaService(
            UiaStore(db),
            self.account_store,
            self.registration_tokens,
            self.auth,
            self.ratelimiter,
            clock,
            server_name,
            config.registration,
            self.email_validation,
        )
        self.threepids = ThreepidService(
            self.threepid_store, self.pusher_store, self.email_validation, self.uia, clock
        )
        self.to_device = ToDeviceService(
            ToDeviceStore(db), self.notifier, clock, server_name, self.edu_outbox
        )
        self.device_lists = DeviceListService(
            self.device_list_store,
            self.notifier,
            self.event_store,
            server_name=server_name,
            outbox=self.edu_outbox,
        )
        # Remote users' devices, kept from their servers' updates (issue 18).
        self.remote_devices = RemoteDeviceLists(
            self.remote_device_store,
            self.federation_client,
            self.device_lists,
            self.device_list_store,
            clock,
            server_name,
        )
        self.e2e_keys = E2eKeyService(
            E2eKeyStore(db),
            self.device_lists,
            self.uia,
            server_name,
            self.notifier,
            remote=self.remote_queries,
            remote_cache=self.remote_devices if config.federation.enabled else None,
        )
        # What other servers see of our users' keys (federation /user/keys, /user/devices).
        self.federation_keys = FederationKeyService(self.e2e_keys, self.device_lists, server_name)
        self.key_backup = KeyBackupService(KeyBackupStore(db))
        # Link secrets come from the server's own secret, never the signing key; links
        # signed with the signing key before are honoured for a grace period.
        server_secret = load_or_create_server_secret(
            config.data_path / SERVER_SECRET_FILE, clock.now_ms()
        )
        self.unsubscriber = Unsubscriber(
            server_secret.derive("push-unsubscribe"),
            clock,
            legacy_secret=bytes(signing_key.encode()),
            legacy_until_ms=server_secret.created_ms + LEGACY_UNSUBSCRIBE_GRACE_MS,
        )
        self.pushers = PusherService(
            self.pusher_store,
            config.push,
            config.email,
            clock,
            self.unsubscriber,
            self.email_validation,
            self.outbound,
        )
        self.filters = FilterService(FilterStore(db))
        self.user_directory = UserDirectoryService(UserDirectoryStore(db))

    def _build_status(self, config: HomeserverConfig, db: Database, clock: Clock) -> None:
        """Typing, receipts and read markers, unread counts (issue 3)."""
        self.typing = TypingService(
            TypingStore(db), self.room_store, self.notifier, clock, self.edu_outbox
        )
        self._singleton("typing_expiry", self.typing.run_expiry)
        self.receipts = ReceiptService(
            self.receipt_store,
            self.event_store,
            self.room_store,
            self.account_data,
            self.notifier,
            clock,
            self.edu_outbox,
        )
        self.unread = UnreadCountService(
            self.push_store,
            self.ignore_lists,
            self.event_store,
            self.receipt_store,
            clock,
            config.push.action_retention_ms,
        )

    def _build_transactions(self, config: HomeserverConfig, db: Database, clock: Clock) -> None:
        """Transactions both ways (issue 18): inbound PDUs and EDUs, the remote device list
        cache, and the outbound sender (a background job, with federation on)."""
        self.inbound_edus = InboundEdus(
            self.typing,
            self.receipts,
            self.presence,
            self.to_device,
            self.remote_devices,
            self.room_acls,
        )
        self.transactions = TransactionService(
            self.federation_queue_store,
            self.incoming_events,
            self.inbound_edus,
            self.room_store,
            clock,
            self.room_acls,
            self.federation_client,
            keys=self.keyring,
        )
        # Built on every worker; its job runs on one at a time (the lease below).
        self.federation_sender = FederationSender(
            db,
            self.federation_queue_store,
            self.event_store,
            self.federation_client,
            self.federation_keys,
            clock,
            self.bus,
            config.server_name,
            self.federation_policy.allows,
            self.federation_wake,
        )
        if config.federation.enabled:
            self._singleton("federation_transaction_pruner", self.transactions.run_pruner)
            self._singleton("federation_sender", self.federation_sender.run)
            self._singleton("device_list_resyncs", self.remote_devices.run_resyncs)

    def _build_sliding_sync(self, db: Database, clock: Clock) -> SlidingSyncService:
        """Simplified sliding sync (MSC4186, issue 20), fed by the same sources as /sync."""
        sources = ExtensionSources(
            self.to_device,
            self.e2e_keys,
            AccountDataWithPushRules(self.account_data, self.push_rules),
            self.account_data,
            self.receipts,
            self.typing,
            self.thread_subscription_store,
        )
        sliding_sync = SlidingSyncService(
            db,
            SlidingSyncStore(db),
            self.event_store,
            self.room_store,
            self.rooms,
            self.visibility,
            self.notifier,
            clock,
            sources=sources,
            unread=self.unread,
            direct=self.account_data,
            ignored=self.ignore_lists,
            invite_permissions=self.account_data,
        )
        # Per worker: at the stop it stores this worker's connection positions.
        self.background_jobs.append(sliding_sync.run_expiry)
        return sliding_sync

    def _build_account_service(self, config: HomeserverConfig, clock: Clock) -> None:
        """Registration, login, devices, deactivation: built after the services that keep
        something for an account or its devices, which its deletions reach."""
        self.login_tokens = LoginTokens(LoginTokenStore(self.db), self.uia, clock, config.auth)
        self.sso_store = SsoStore(self.db)
        self.accounts = AccountService(
            self.account_store,
            self.auth,
            self.uia,
            self.ratelimiter,
            clock,
            config.server_name,
            config.registration,
            self.email_validation,
            # A deactivated account leaves its rooms and lets go of its e-mail addresses.
            user_data=(self.memberships, self.threepids),
            # Deleted devices take their to-device messages, keys, pushers and sliding sync
            # connections with them.
            device_data=(self.to_device, self.e2e_keys, self.pushers, self.sliding_sync),
            appservices=self.appservices,
            login_tokens=self.login_tokens,
            jwt_login=JwtLogin(config.jwt_login, clock) if config.jwt_login.enabled else None,
            password_login=config.auth.password_login_enabled,
            sso_providers=[(p.id, p.name) for p in config.sso.providers],
        )
        self.sso: SsoService | None = None
        if config.sso.providers:
            # The operator chose the providers' URLs: loopback and private addresses are
            # allowed, as for application services (docs/sign-in.md).
            provider_outbound = Outbound(AddressPolicy(("0.0.0.0/0", "::/0")))
            self.sso = SsoService(
                config.sso,
                self.sso_store,
                self.accounts,
                provider_outbound.client(timeout_s=config.sso.request_timeout_ms / 1000),
                clock,
                config.base_url,
                config.server_name,
                uia=self.uia,
            )
            # UIA offers m.login.sso to accounts linked to a provider (fallback page).
            self.uia.use_single_sign_on(self.sso_store, [p.id for p in config.sso.providers])
        self.oauth: OAuthService | None = None
        if config.oauth.enabled:
            self.oauth = OAuthService(
                config.oauth,
                OAuthStore(self.db),
                self.account_store,
                self.accounts,
                clock,
                config.base_url,
                config.auth.access_token_lifetime_ms,
                login_tokens=self.sso_store if config.sso.providers else None,
                sso_providers=[(p.id, p.name) for p in config.sso.providers],
                profiles=self.profiles,
                ratelimiter=self.ratelimiter,
            )

    def _build_push_delivery(self, config: HomeserverConfig, db: Database, clock: Clock) -> None:
        """/notifications, the pusher sender and missed-message e-mails (issue 6)."""
        self.push_notifications = NotificationService(
            self.push_store, self.event_store, self.rooms, self.ignore_lists
        )
        self.pusher_sender = PusherSender(
            db,
            self.pusher_store,
            self.push_store,
            self.event_store,
            self.room_store,
            self.unread,
            clock,
            self.bus,
            config=config.push,
            email=config.email,
            presence=config.presence,
            base_url=config.base_url,
            unsubscriber=self.unsubscriber,
            ignored=self.ignore_lists,
            outbound=self.outbound,
        )
        self._singleton("pusher", self.pusher_sender.run)
        self.push_action_pruner = PushActionPruner(self.push_store, clock, config.push)
        self._singleton("push_action_pruner", self.push_action_pruner.run)
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

    def _build_admin(self, config: HomeserverConfig, clock: Clock) -> None:
        """The admin API (issue 22): after every service it administers."""
        self.session_recorder = SessionRecorder(self.admin_store, clock)
        self._singleton("session_pruner", self.session_recorder.run_pruner)
        self.admin_users = AdminUsers(
            self.admin_store,
            self.accounts,
            self.account_store,
            self.auth,
            self.profiles,
            self.threepid_store,
            self.room_store,
            self.ratelimiter,
            clock,
            config.server_name,
            self.pushers,
        )
        self.background_jobs.append(self.admin_users.run_overrides_refresh)
        self.shared_secret_registration = SharedSecretRegistration(
            config.registration.shared_secret,
            self.accounts,
            self.admin_store,
            clock,
            config.server_name,
        )
        self.admin_rooms = AdminRooms(
            AdminRoomStore(self.db),
            self.admin_store,
            self.room_store,
            self.event_store,
            self.rooms,
            self.memberships,
            self.directory,
            self.event_sender,
            clock,
            config.server_name,
        )
        self.admin_room_tasks = AdminRoomTasks(
            AdminRoomStore(self.db),
            self.admin_store,
            self.room_store,
            self.event_store,
            self.memberships,
            self.room_creator,
            self.event_sender,
            clock,
            config.server_name,
            invalidations=self.cache_invalidations,
        )
        self.admin_media = AdminMedia(
            self.admin_media_store, self.media, self.room_store, clock, config.server_name
        )
        # Media nobody fetched within its lifetime goes, on one worker (the job's lease).
        self.media_retention = MediaRetention(
            config.media.retention,
            self.admin_media_store,
            self.job_leases,
            self.admin_media,
            clock,
            remote=self.admin_media,
        )
        if self.media_retention.enabled:
            self.background_jobs.append(self.media_retention.run)
        self.admin_federation = AdminFederation(
            AdminFederationStore(self.db), self.federation_wake.set
        )
        self.admin_jobs = AdminJobs(
            AdminJobsStore(self.db),
            self.media_retention,
            clock,
            federation=config.federation.enabled,
            appservices=bool(self.appservices),
        )
        self.admin_server = AdminServer(
            AdminServerStore(self.db),
            self.registration_tokens,
            self.room_store,
            self.event_store,
            self.accounts,
            self.account_data,
            self.memberships,
            self.room_creator,
            self.event_sender,
            clock,
            config.server_name,
            config.server_notices,
        )

    def _build_media(self, config: HomeserverConfig, db: Database, clock: Clock) -> None:
        """The media repository (issue 5): storage backend, uploads, thumbnails, previews."""
        # Quarantined media (the admin API) is served to nobody.
        self.admin_media_store = AdminMediaStore(db, config.server_name)
        # Downloads mark the last access of media, written by a job (media retention).
        self.media_access = AccessRecorder(MediaAccessStore(db), clock)
        self.background_jobs.append(self.media_access.run)
        self.media = MediaService(
            MediaStore(db),
            build_backend(config.media.storage, config.data_path),
            clock,
            config.server_name,
            config.media,
            spool_dir(config.media.storage, config.data_path),
            ratelimiter=self.ratelimiter,
            quarantine=self.admin_media_store,
            remote_source=self.remote_media_fetcher,
            access=self.media_access,
        )
        self.url_previews = UrlPreviewer(config.media.url_preview, self.media, self.outbound)


def _redis_bus(config: HomeserverConfig) -> RedisBus | None:
    """The bus through Redis (``redis.url``); redis-py is imported only then."""
    if config.redis.url is None:
        return None
    from homeserver.wakeups.redis_bus import RedisBus

    return RedisBus(config.redis.url, channel=f"{config.redis.channel_prefix}wakeups")
