"""The ASGI app on the composition root's services: which routes are served, and what each
route area may call (``services_of``). The one module of ``homeserver/`` that imports routes.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount

from admin_api import federation as admin_federation
from admin_api import jobs as admin_jobs
from admin_api import media as admin_media
from admin_api import rooms as admin_rooms
from admin_api import routes as admin_routes
from admin_api import server as admin_server
from admin_api import users as admin_users
from client_api import (
    account,
    account_data,
    appservice,
    delayed_events,
    devices,
    directory,
    events_legacy,
    filters,
    hierarchy,
    key_backup,
    keys,
    knock,
    login_token,
    mutual_rooms,
    notifications,
    oauth,
    openid,
    presence,
    profile,
    pushers,
    pushrules,
    receipts,
    relations,
    reports,
    room_summary,
    rooms,
    search,
    sliding_sync,
    sso,
    support,
    sync,
    thirdparty,
    thread_subscriptions,
    threepids,
    timestamps,
    to_device,
    typing_notifications,
    upgrade,
    user_directory,
    versions,
    voip,
    websocket,
)
from client_api import routes as client_routes
from federation import edge as federation_edge
from federation import hierarchy as federation_hierarchy
from federation import keys as key_server
from federation import media as federation_media
from federation import membership as federation_membership
from federation import openid as federation_openid
from federation import public_rooms, query, send, user_keys
from federation import rooms as federation_rooms
from federation import routes as federation_routes
from homeserver.app import Homeserver
from homeserver.core.errors import MatrixError
from homeserver.core.pool_guard import PoolExhausted
from homeserver.metrics.requests import RequestMetrics
from homeserver.web.cors import CorsMiddleware
from homeserver.web.edge import (
    EdgeServices,
    http_error_handler,
    internal_error_handler,
    matrix_error_handler,
    pool_exhausted_handler,
)
from homeserver.web.escaped_slash import EscapedSlashMiddleware, restore_slashes
from homeserver.web.health import HealthServices
from homeserver.web.health import routes as health_routes
from homeserver.web.proxies import TrustedProxiesMiddleware, trusted_networks
from homeserver.web.request_guard import RequestGuardMiddleware
from media_repo import routes as media_routes


def route_services(hs: Homeserver) -> list[object]:
    """What each route area calls (``services_of`` in homeserver/web/edge.py): routes see
    these, never the whole Homeserver."""
    config = hs.config
    return [
        EdgeServices(hs.auth, config.limits.max_request_body_bytes, hs.session_recorder),
        _health_services(hs),
        admin_users.AdminUserServices(hs.admin_users, hs.shared_secret_registration),
        admin_rooms.AdminRoomServices(hs.admin_rooms, hs.admin_room_tasks, hs.admin_users),
        admin_server.AdminServerServices(hs.admin_server, hs.admin_users),
        admin_media.AdminMediaServices(hs.admin_media, hs.admin_users),
        admin_federation.AdminFederationServices(hs.admin_federation),
        admin_jobs.AdminJobServices(hs.admin_jobs),
        account.AccountServices(hs.accounts, hs.server_name, config.base_url),
        oauth.OAuthServices(hs.oauth, hs.server_name, config.base_url.startswith("https:")),
        sso.SsoServices(hs.sso, hs.server_name, config.base_url.startswith("https:")),
        account_data.AccountDataServices(hs.account_data),
        delayed_events.DelayedEventServices(hs.delayed_events),
        thread_subscriptions.ThreadSubscriptionServices(hs.thread_subscriptions),
        devices.DeviceServices(hs.accounts),
        directory.DirectoryServices(
            hs.directory, hs.server_name, hs.ratelimiter, hs.remote_directories
        ),
        filters.FilterServices(hs.filters),
        key_backup.KeyBackupServices(hs.key_backup),
        keys.KeyServices(hs.e2e_keys),
        knock.KnockServices(hs.directory, hs.memberships, hs.ratelimiter),
        notifications.NotificationServices(hs.push_notifications),
        presence.PresenceServices(hs.presence),
        profile.ProfileServices(hs.profiles),
        pushers.PusherServices(hs.pushers),
        pushrules.PushRuleServices(hs.push_rules),
        receipts.ReceiptServices(hs.receipts),
        relations.RelationServices(hs.relations),
        reports.ReportServices(hs.reports),
        appservice.AppServiceServices(hs.appservice_queries),
        thirdparty.ThirdPartyServices(hs.appservice_queries),
        room_summary.RoomSummaryServices(hs.room_summaries),
        openid.OpenIdServices(hs.openid),
        login_token.LoginTokenServices(hs.login_tokens),
        events_legacy.LegacySyncServices(hs.legacy_sync, config.limits.sync_timeout_max_ms),
        federation_openid.OpenIdUserInfoServices(hs.openid),
        mutual_rooms.MutualRoomServices(hs.mutual_rooms),
        timestamps.TimestampServices(hs.timestamps),
        support.SupportServices(config.support),
        voip.VoipServices(hs.turn),
        rooms.RoomServices(
            hs.rooms,
            hs.room_creator,
            hs.memberships,
            hs.directory,
            hs.sending,
            hs.ratelimiter,
            hs.delayed_events,
        ),
        search.SearchServices(hs.search),
        hierarchy.HierarchyServices(hs.space_hierarchy),
        sliding_sync.SlidingSyncServices(
            hs.sliding_sync, hs.presence, config.limits.sync_timeout_max_ms
        ),
        sync.SyncServices(hs.sync, hs.filters, hs.presence, config.limits.sync_timeout_max_ms),
        threepids.ThreepidServices(hs.threepids, hs.email_validation),
        to_device.ToDeviceServices(hs.to_device),
        typing_notifications.TypingServices(hs.typing),
        upgrade.UpgradeServices(hs.room_upgrader),
        user_directory.UserDirectoryServices(hs.user_directory),
        versions.VersionServices(
            config.base_url,
            config.websocket.enabled,
            config.rooms.default_room_version,
            hs.email_validation.enabled,
            config.auth.login_via_existing_session,
        ),
        websocket.WebSocketServices(hs.websocket, config.websocket.enabled),
        media_routes.MediaServices(hs.media, hs.url_previews, config.media),
        federation_edge.FederationEdgeServices(hs.federation_auth),
        key_server.KeyServerServices(hs.local_keys, hs.keyring, hs.clock),
        query.QueryServices(hs.profiles, hs.directory, hs.server_name),
        user_keys.UserKeyServices(hs.federation_keys),
        public_rooms.PublicRoomServices(hs.directory),
        federation_media.FederationMediaServices(hs.media, hs.server_name),
        federation_rooms.RoomReadServices(hs.room_reads, hs.server_name, hs.clock),
        federation_membership.MembershipServices(hs.federated_memberships, hs.server_name),
        send.TransactionServices(hs.transactions),
        federation_hierarchy.FederationHierarchyServices(hs.space_hierarchy),
    ]


def _health_services(hs: Homeserver) -> HealthServices:
    redis = hs.redis_bus
    return HealthServices(
        worker=hs.config.worker.name,
        database=hs.db.ping,
        redis=redis.ping if redis is not None else None,
        bus_subscribed=(lambda: redis.subscribed) if redis is not None else None,
        closing=lambda: hs.notifier.closing,
    )


def create_app(hs: Homeserver) -> Starlette:
    # Our keys are public; the Server-Server API is served only with federation on.
    server_server: list[BaseRoute] = [Mount("/_matrix/key", routes=federation_routes.key_routes)]
    if hs.config.federation.enabled:
        server_server.append(
            Mount("/_matrix/federation", routes=federation_routes.federation_routes)
        )
    else:
        server_server.append(Mount("/_matrix/federation", routes=federation_routes.openid_routes))
    app = Starlette(
        routes=[
            *server_server,
            Mount("/_matrix/media", routes=media_routes.media_routes),
            # Before /_matrix/client: a Mount that matches a prefix never falls through.
            Mount("/_matrix/client/v1/media", routes=media_routes.client_media_routes),
            Mount(
                "/_matrix/client",
                routes=[*admin_routes.client_admin_routes, *client_routes.client_routes],
            ),
            Mount("/_synapse/admin", routes=admin_routes.admin_routes),
            *client_routes.root_routes,
            *hs.push_gateway_routes,
            *health_routes,
        ],
        middleware=[
            # First: it times what the others do too.
            Middleware(RequestMetrics, metrics=hs.metrics),
            # Before everything that reads the client's address.
            Middleware(
                TrustedProxiesMiddleware,
                networks=trusted_networks(hs.config.listen.trusted_proxies),
            ),
            Middleware(CorsMiddleware),
            Middleware(RequestGuardMiddleware),
            # After the guard, which refuses a NUL: it marks encoded slashes with one.
            Middleware(EscapedSlashMiddleware),
        ],
        exception_handlers={
            MatrixError: matrix_error_handler,
            HTTPException: http_error_handler,
            PoolExhausted: pool_exhausted_handler,
            Exception: internal_error_handler,
        },
    )
    restore_slashes(app.routes)
    app.state.services = {type(s): s for s in route_services(hs)}
    return app
