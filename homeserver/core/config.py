"""The one config object: a frozen pydantic tree read from YAML with ``HS_`` overrides."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from homeserver.core.ids import is_valid_server_name


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8008, ge=0, le=65535)
    # After SIGTERM: how long requests in flight get to finish before they are cancelled.
    shutdown_timeout_ms: int = Field(default=5_000, ge=0)
    # Both set: the listener serves HTTPS (PEM files). Federation needs HTTPS on the port
    # other servers reach (8448 by default, see docs/federation.md), here or on a proxy.
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None
    # Load balancers (addresses or networks) whose X-Forwarded-For is believed: a request
    # from one of them counts as from the client address it names (rate limits, logs).
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            ipaddress.ip_network(network.strip(), strict=False)  # a ValueError names it
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> ListenConfig:
        if (self.tls_certificate_path is None) != (self.tls_private_key_path is None):
            raise ValueError("listen.tls_certificate_path and tls_private_key_path go together")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_certificate_path is not None


class DatabaseConfig(Section):
    # SQLite (WAL) in the data directory is the embedded default; PostgreSQL is
    # "postgresql+asyncpg://user@host:5432/dbname".
    url: str = "sqlite+aiosqlite:///homeserver.db"
    pool_size: int = Field(default=10, ge=1)
    # How long a request waits for a free connection before it gets a 503.
    pool_timeout_ms: int = Field(default=30_000, ge=1)


class RegistrationConfig(Section):
    enabled: bool = False  # closed by default: accounts come from tokens or ``register-user``
    require_token: bool = False  # with enabled: every registration needs a registration token
    tokens: tuple[str, ...] = ()  # static registration tokens, usable without limit
    min_password_length: int = Field(default=8, ge=1)
    # The admin API's shared-secret registration (/_synapse/admin/v1/register): whoever
    # knows it can create accounts, administrators too. None: that endpoint is off.
    shared_secret: str | None = Field(default=None, min_length=16)
    # Guest accounts (POST /register?kind=guest): limited to the endpoints the spec lists
    # for guests and to rooms whose m.room.guest_access is can_join.
    allow_guest_access: bool = False


class VoipConfig(Section):
    """TURN servers handed to clients by GET /voip/turnServer (docs/config.md)."""

    turn_uris: tuple[str, ...] = ()
    # coturn's static-auth-secret (use-auth-secret): the credentials are derived from it.
    turn_shared_secret: str | None = None
    # How long a set of credentials is valid.
    turn_user_lifetime_ms: int = Field(default=24 * 3600 * 1000, ge=1000)
    turn_allow_guests: bool = True


class SupportContact(Section):
    """One contact of /.well-known/matrix/support (at least a Matrix ID or an address)."""

    role: str
    matrix_id: str | None = None
    email_address: str | None = None

    @model_validator(mode="after")
    def _reachable(self) -> SupportContact:
        if self.matrix_id is None and self.email_address is None:
            raise ValueError("a support contact needs matrix_id or email_address")
        return self


class SupportConfig(Section):
    """What GET /.well-known/matrix/support answers (empty: 404)."""

    contacts: tuple[SupportContact, ...] = ()
    support_page: str | None = None


class RateLimit(Section):
    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitsConfig(Section):
    enabled: bool = True
    login: RateLimit = RateLimit(per_second=0.2, burst=5)
    registration: RateLimit = RateLimit(per_second=0.2, burst=5)
    message: RateLimit = RateLimit(per_second=10, burst=50)
    join: RateLimit = RateLimit(per_second=0.5, burst=10)
    # Validation mails (requestToken), per client IP and per e-mail address: each one is a
    # mail to an address the requester may not own.
    threepid_validation: RateLimit = RateLimit(per_second=0.003, burst=5)
    # POST /media/v1/create, per user: each is a row (and a pending quota slot) kept a while.
    media_create: RateLimit = RateLimit(per_second=10, burst=50)
    # /publicRooms, per user (POST) or client IP (GET): each reads every public room's state.
    public_rooms: RateLimit = RateLimit(per_second=1, burst=20)


class AuthConfig(Section):
    # Access tokens expire when refresh tokens are used; long-lived otherwise (spec: optional).
    access_token_lifetime_ms: int = Field(default=5 * 60 * 1000, ge=1000)
    token_cache_size: int = Field(default=10_000, ge=0)
    # argon2id cost; the defaults are OWASP's minimum for argon2id (19 MiB, 2 passes).
    password_hash_memory_kib: int = Field(default=19_456, ge=8)
    password_hash_time_cost: int = Field(default=2, ge=1)
    # POST /login/get_token (spec v1.7, MSC3882): a signed-in device mints a short-lived,
    # single-use m.login.token for a new device (sign in by QR code). Off by default.
    login_via_existing_session: bool = False
    login_token_lifetime_ms: int = Field(default=2 * 60 * 1000, ge=1000)
    login_token_require_uia: bool = True
    # m.login.password on /login (and its offer in GET /login); false leaves sign-in to
    # JWT, single sign-on or the OAuth 2.0 API.
    password_login_enabled: bool = True


_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class JwtLoginConfig(Section):
    """``org.matrix.login.jwt`` on /login (docs/sign-in.md): a JSON Web Token signed by the
    operator's identity system names the account."""

    enabled: bool = False
    # One of the two: the shared secret of the HS* algorithms, or the PEM public key of the
    # others. Never both: a public key must not be usable as an HMAC secret.
    secret: str | None = None
    public_key: str | None = None
    algorithms: tuple[str, ...] = ("HS256",)
    issuer: str | None = None  # when set, the token's ``iss`` must be this
    # When set, the token's ``aud`` must name one of them; when empty, a token with ``aud``
    # is refused (it was meant for someone else).
    audiences: tuple[str, ...] = ()
    subject_claim: str = "sub"  # the claim that holds the localpart
    create_accounts: bool = True  # false: only accounts that already exist sign in
    leeway_seconds: int = Field(default=0, ge=0, le=300)  # clock skew allowed on exp/nbf

    @model_validator(mode="after")
    def _check(self) -> JwtLoginConfig:
        if not self.enabled:
            return self
        if not self.algorithms:
            raise ValueError("jwt_login.algorithms must name at least one algorithm")
        unknown = [a for a in self.algorithms if a not in _HMAC_ALGORITHMS | _PUBLIC_KEY_ALGORITHMS]
        if unknown:
            raise ValueError(f"jwt_login.algorithms: unsupported {unknown} (never 'none')")
        hmac = [a for a in self.algorithms if a in _HMAC_ALGORITHMS]
        if hmac and len(hmac) != len(self.algorithms):
            raise ValueError("jwt_login.algorithms: do not mix HS* with public-key algorithms")
        if (self.secret is None) == (self.public_key is None):
            raise ValueError("jwt_login needs exactly one of secret and public_key")
        if hmac and self.secret is None:
            raise ValueError("jwt_login: HS* algorithms need secret")
        if not hmac and self.public_key is None:
            raise ValueError("jwt_login: public-key algorithms need public_key")
        if self.secret is not None and len(self.secret.encode()) < 32:
            raise ValueError("jwt_login.secret must be at least 32 bytes")
        if self.public_key is not None:
            # Imported only when a key is configured: cryptography costs ~10 MB at start-up.
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                load_pem_public_key(self.public_key.encode())
            except ValueError as e:
                raise ValueError(f"jwt_login.public_key is not a PEM public key: {e}") from e
        return self


class OAuthConfig(Section):
    """The spec's OAuth 2.0 API (docs/sign-in.md): clients register, users sign in on the
    server's own page."""

    enabled: bool = False
    code_lifetime_ms: int = Field(default=60_000, ge=1000, le=600_000)


class OidcProviderConfig(Section):
    """An upstream OpenID Connect provider for single sign-on (docs/sign-in.md)."""

    id: str = Field(pattern=r"^[a-z0-9._~-]{1,64}$")  # the idp_id of /login/sso/redirect
    name: str
    issuer: str  # discovery: <issuer>/.well-known/openid-configuration
    client_id: str
    client_secret: str | None = None  # sent as client_secret_post; None: a public client
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    localpart_claim: str = "preferred_username"  # suggested on the choose-a-username page
    displayname_claim: str | None = "name"
    # When set, the provider's e-mail claim must be verified and in one of these domains.
    allowed_email_domains: tuple[str, ...] = ()


class SsoConfig(Section):
    providers: tuple[OidcProviderConfig, ...] = ()
    request_timeout_ms: int = Field(default=10_000, ge=100)

    @model_validator(mode="after")
    def _unique_ids(self) -> SsoConfig:
        ids = [p.id for p in self.providers]
        if len(set(ids)) != len(ids):
            raise ValueError("sso.providers: each id must be unique")
        return self


class LimitsConfig(Section):
    max_request_body_bytes: int = Field(default=1024 * 1024, ge=65_536)
    sync_timeout_max_ms: int = Field(default=60_000, ge=0)


class PresenceConfig(Section):
    # Disabled: PUT /presence is accepted and ignored, sync carries no presence (as Synapse).
    enabled: bool = True
    # Online without activity (a sent event, PUT /presence) for this long: unavailable.
    idle_after_ms: int = Field(default=5 * 60 * 1000, ge=1000)
    # No open sync and no activity for this long: offline.
    offline_after_ms: int = Field(default=30 * 1000, ge=1000)


class RoomsConfig(Section):
    default_room_version: str = "12"


class WebSocketConfig(Section):
    """The WebSocket sync transport (docs/websocket.md)."""

    enabled: bool = True
    # The server sends {"type": "ping"} this often; a client silent for ping_timeout_ms
    # after a ping is closed (4002). Also the time a browser has to send its auth frame.
    ping_interval_ms: int = Field(default=30_000, ge=100)
    ping_timeout_ms: int = Field(default=20_000, ge=100)
    # Frames waiting for a client that does not read; past this it is closed (4008) and
    # resumes from its last next_batch, so a slow reader never holds more than this.
    max_queued_frames: int = Field(default=64, ge=1)
    # The largest frame a client may send: a 65 536-byte event plus the request around it.
    max_frame_bytes: int = Field(default=131_072, ge=1024)


class MediaStorageS3Config(Section):
    """An S3-compatible bucket (AWS S3, SeaweedFS, MinIO, ...): path-style, SigV4."""

    endpoint_url: str | None = None  # None: AWS itself
    bucket: str = "media"
    region: str = "us-east-1"
    # None: the usual AWS chain (AWS_ACCESS_KEY_ID, ~/.aws, instance roles).
    access_key_id: str | None = None
    secret_access_key: str | None = None
    prefix: str = ""  # prepended to every object key, e.g. "homeserver/"


class MediaStorageConfig(Section):
    backend: Literal["filesystem", "s3"] = "filesystem"
    # Filesystem: the media root, relative to data_dir. Both backends keep upload spool
    # files under <path>/tmp while a body streams in.
    path: str = "media"
    s3: MediaStorageS3Config = MediaStorageS3Config()


class ThumbnailSize(Section):
    width: int = Field(ge=1, le=4096)
    height: int = Field(ge=1, le=4096)
    method: Literal["crop", "scale"]


class ThumbnailsConfig(Section):
    enabled: bool = True
    # Made when an image is uploaded; a request for another size is served the smallest of
    # these at least as large, or made on demand (and kept) past the largest.
    sizes: tuple[ThumbnailSize, ...] = (
        ThumbnailSize(width=32, height=32, method="crop"),
        ThumbnailSize(width=96, height=96, method="crop"),
        ThumbnailSize(width=320, height=240, method="scale"),
        ThumbnailSize(width=640, height=480, method="scale"),
        ThumbnailSize(width=800, height=600, method="scale"),
    )
    # Decoding is bounded: images past these are refused before their pixels are decoded.
    max_image_pixels: int = Field(default=32_000_000, ge=1)
    max_source_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    # Images decoded at once per worker (each may take width*height*4 bytes).
    concurrency: int = Field(default=2, ge=1)


class MediaCdnConfig(Section):
    """Downloads redirected to short-lived signed URLs on a caching edge (docs/media.md)."""

    base_url: str | None = None  # e.g. https://media-cdn.example.org; None: no CDN
    secret: str | None = None  # shared with the edge's secure_link_md5
    url_lifetime_ms: int = Field(default=300_000, ge=1000)

    @model_validator(mode="after")
    def _check_secret(self) -> MediaCdnConfig:
        if self.base_url is not None and (self.secret is None or len(self.secret) < 16):
            raise ValueError("media.cdn.base_url needs a secret of at least 16 characters")
        return self


def moved_to_outbound(data: Any, key: str, section: str) -> Any:
    """A key that outbound.allow_addresses replaced: at its default (false, empty) it is
    dropped; set, it stops the start-up with what to write instead."""
    if isinstance(data, dict) and key in data:
        if data[key]:
            raise ValueError(
                f"{section}.{key} was replaced by outbound.allow_addresses, one list of CIDR "
                f"ranges for every outbound request (e.g. [127.0.0.1/32]); see docs/config.md"
            )
        data = {k: v for k, v in data.items() if k != key}
    return data


class OutboundConfig(Section):
    """Requests to URLs that others chose: URL previews, push gateways (and WebPush
    endpoints in push_gateway's config)."""

    # Private, loopback, link-local, CGNAT, NAT64, 6to4, Teredo, documentation and other
    # special addresses are refused unless inside one of these ranges (CIDRs or addresses).
    allow_addresses: tuple[str, ...] = ()
    # PEM file of the CAs these HTTPS requests trust; None: certifi's bundle. (Federation
    # has its own, federation.tls_ca_bundle.)
    tls_ca_bundle: str | None = None

    @field_validator("allow_addresses")
    @classmethod
    def _check_ranges(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            ipaddress.ip_network(cidr.strip(), strict=False)  # a ValueError names the range
        return value


class UrlPreviewConfig(Section):
    enabled: bool = False
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    timeout_ms: int = Field(default=10_000, ge=100)
    max_redirects: int = Field(default=5, ge=0)
    user_agent: str = "homeserver-url-preview/0.1"

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return moved_to_outbound(data, "ip_range_allowlist", "media.url_preview")


class MediaRetentionConfig(Section):
    """Media deleted when nobody fetched it for a while (docs/media.md): by last download or
    thumbnail, else by upload. None keeps it for ever. Downloads are recorded about once an
    hour per media, so a lifetime is a day at least."""

    local_media_lifetime_ms: int | None = Field(default=None, ge=24 * 3600 * 1000)
    # Other servers' media cached here (once federation downloads media).
    remote_media_lifetime_ms: int | None = Field(default=None, ge=24 * 3600 * 1000)
    # How often the job (on one worker) looks for media past its lifetime.
    interval_ms: int = Field(default=3600 * 1000, ge=60_000)


class MediaConfig(Section):
    """The media repository (docs/media.md)."""

    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    user_quota_bytes: int | None = Field(default=None, ge=0)  # None: no quota
    # POST /media/v1/create: IDs waiting for content per user, and how long one waits.
    max_pending_uploads: int = Field(default=10, ge=1)
    pending_upload_lifetime_ms: int = Field(default=24 * 3600 * 1000, ge=1000)
    # The most a download of pending media waits for its content (timeout_ms is capped here).
    max_download_wait_ms: int = Field(default=20_000, ge=0)
    # The legacy unauthenticated /_matrix/media/v3/download and /thumbnail: media created
    # before unauthenticated_freeze_ts (ms) is still served there; allow_... serves all of it.
    allow_unauthenticated_downloads: bool = False
    unauthenticated_freeze_ts: int = Field(default=0, ge=0)
    storage: MediaStorageConfig = MediaStorageConfig()
    thumbnails: ThumbnailsConfig = ThumbnailsConfig()
    cdn: MediaCdnConfig = MediaCdnConfig()
    url_preview: UrlPreviewConfig = UrlPreviewConfig()
    retention: MediaRetentionConfig = MediaRetentionConfig()


class EmailConfig(Section):
    """Outgoing e-mail: missed-message notifications, validation of e-mail addresses and
    password reset (docs/push.md)."""

    enabled: bool = False
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    # none: plain SMTP; starttls: upgrade a plain connection (port 587); tls: TLS from the
    # first byte (port 465).
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    from_address: str = "Matrix <noreply@localhost>"
    app_name: str = "Matrix"
    # A missed-message mail waits this long after the first unread event it reports.
    notif_delay_ms: int = Field(default=10 * 60 * 1000, ge=0)
    client_url: str | None = None  # links in mails open this client (e.g. a web client)
    # A validation mail's link (adding an address, resetting a password) works this long;
    # a validated session must be used within the same time.
    validation_token_lifetime_ms: int = Field(default=3600 * 1000, ge=60_000)
    # true: requestToken answers an unknown address (password reset) or one bound to another
    # account (adding it) like any other, with a session that never validates, and sends
    # nothing: nobody learns from it whether an address has an account here.
    inhibit_threepid_errors: bool = False
    # Hosts a requestToken's next_link may lead to (the page a validation link redirects to);
    # None: any http(s) URL. Restricting it keeps validation mails from being open redirects.
    next_link_hosts: tuple[str, ...] | None = None


class PushConfig(Section):
    """Pushers and the pusher sender (docs/push.md)."""

    # true: push only to users with no open sync or WebSocket; false: every notifying event.
    only_when_offline: bool = True
    # SSRF: push gateway URLs go through the outbound transport (outbound.allow_addresses);
    # http:// (not https://) is refused unless allowed.
    allow_http: bool = False
    include_content: bool = True  # full-format pushes carry the event's content
    retry_initial_ms: int = Field(default=1000, ge=1)
    retry_max_ms: int = Field(default=30 * 60 * 1000, ge=1)
    give_up_after_ms: int = Field(default=24 * 3600 * 1000, ge=1000)  # then a push is dropped
    request_timeout_ms: int = Field(default=10_000, ge=100)
    poll_interval_ms: int = Field(default=5_000, ge=10)  # besides wake-ups from new events
    gateway_config: str | None = None  # a push_gateway YAML: mount it at /_matrix/push/v1
    # Push actions (unread counts, /notifications) older than this are deleted, read or not.
    action_retention_ms: int = Field(default=30 * 24 * 3600 * 1000, ge=60_000)
    prune_interval_ms: int = Field(default=3600 * 1000, ge=1000)  # how often that runs

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return moved_to_outbound(data, "allow_private_addresses", "push")


class TrustedKeyServer(Section):
    """A notary whose answers about other servers' keys we accept."""

    server_name: str
    # key ID -> unpadded base64 public key; empty: the notary's keys are fetched from it.
    verify_keys: dict[str, str] = {}

    @field_validator("server_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not is_valid_server_name(value):
            raise ValueError(f"not a valid server name: {value!r}")
        return value


class ServerNoticesConfig(Section):
    """Notices from the server to a user (the admin API's send_server_notice): each user
    gets one room with the system user, tagged ``m.server_notice`` (spec, "Server
    Notices")."""

    enabled: bool = False
    system_user_localpart: str = Field(default="server", min_length=1, max_length=64)
    system_user_display_name: str = Field(default="Server Notices", max_length=256)
    room_name: str = Field(default="Server Notices", max_length=256)


class FederationConfig(Section):
    """The Server-Server API (docs/federation.md)."""

    # false: /_matrix/federation answers M_UNRECOGNIZED and nothing is sent to other
    # servers; the key server (/_matrix/key/v2) still answers.
    enabled: bool = True
    # Server names (globs: * any characters, ? one) we talk to; None: every server.
    allow_servers: tuple[str, ...] | None = None
    deny_servers: tuple[str, ...] = ()  # checked after allow_servers
    # Notaries asked for a server's keys when the server itself does not answer; none by
    # default: a notary is trusted to tell the truth about every server's keys.
    trusted_key_servers: tuple[TrustedKeyServer, ...] = ()
    # Public keys (unpadded base64) known to be compromised: never used to verify anything.
    denied_verify_keys: tuple[str, ...] = ()
    # The valid_until_ts we publish for our keys: others fetch them again after this.
    key_validity_ms: int = Field(default=24 * 3600 * 1000, ge=60_000)
    # PEM file of the CAs that outbound federation trusts; None: the system's (tests use
    # their own CA here).
    tls_ca_bundle: str | None = None
    request_timeout_ms: int = Field(default=30_000, ge=100)


class AppServiceConfig(Section):
    """How transactions and queries reach application services (docs/appservices.md)."""

    # A failed transaction is sent again after 1, 2, 4, ... times this, up to retry_max_ms;
    # it is never dropped: a service gets every transaction, in order, once it answers.
    retry_initial_ms: int = Field(default=1000, ge=1)
    retry_max_ms: int = Field(default=5 * 60 * 1000, ge=1)
    request_timeout_ms: int = Field(default=30_000, ge=100)  # a transaction or a query
    poll_interval_ms: int = Field(default=5_000, ge=10)  # besides wake-ups
    max_events_per_transaction: int = Field(default=100, ge=1, le=1000)
    # MSC4203 (not in the spec yet): services with receive_ephemeral also get the to-device
    # messages of their users' devices, as Synapse's msc2409_to_device_messages_enabled.
    to_device_messages: bool = False


class MetricsListenConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9148, ge=0, le=65535)


class MetricsConfig(Section):
    # Prometheus metrics on a listener of their own (GET /metrics), off by default: what a
    # scrape shows (routes, queue depths, pool use) is for the operator's network, never the
    # client port. docs/metrics.md lists the families.
    listen: MetricsListenConfig | None = None


class RedisConfig(Section):
    """Redis, shared by the workers of one deployment: the wake-up bus and the shared rate
    limits. None (the default): one process, everything in memory."""

    url: str | None = None  # e.g. redis://127.0.0.1:6379/0
    # Names of this deployment's channels and keys begin with it (several deployments, or
    # tests, on one Redis).
    channel_prefix: str = Field(default="homeserver:", pattern=r"^[A-Za-z0-9_.:-]{0,64}$")


class WorkerConfig(Section):
    """This process among the deployment's workers. Several workers need PostgreSQL and
    Redis; every worker reads the same config and is told its name (``HS_WORKER__NAME``)."""

    name: str = Field(default="main", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class HomeserverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server_name: str = "localhost"
    public_baseurl: str | None = None
    data_dir: str = "data"
    signing_key_path: str = "signing.key"
    listen: ListenConfig = ListenConfig()
    database: DatabaseConfig = DatabaseConfig()
    registration: RegistrationConfig = RegistrationConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    auth: AuthConfig = AuthConfig()
    jwt_login: JwtLoginConfig = JwtLoginConfig()
    oauth: OAuthConfig = OAuthConfig()
    sso: SsoConfig = SsoConfig()
    limits: LimitsConfig = LimitsConfig()
    rooms: RoomsConfig = RoomsConfig()
    websocket: WebSocketConfig = WebSocketConfig()
    presence: PresenceConfig = PresenceConfig()
    media: MediaConfig = MediaConfig()
    push: PushConfig = PushConfig()
    email: EmailConfig = EmailConfig()
    outbound: OutboundConfig = OutboundConfig()
    federation: FederationConfig = FederationConfig()
    server_notices: ServerNoticesConfig = ServerNoticesConfig()
    # Application service registration files (YAML; Synapse's name for the option). A
    # relative path is relative to the config file.
    app_service_config_files: tuple[str, ...] = ()
    appservice: AppServiceConfig = AppServiceConfig()
    metrics: MetricsConfig = MetricsConfig()
    voip: VoipConfig = VoipConfig()
    support: SupportConfig = SupportConfig()
    redis: RedisConfig = RedisConfig()
    worker: WorkerConfig = WorkerConfig()

    @field_validator("server_name")
    @classmethod
    def _check_server_name(cls, value: str) -> str:
        if not is_valid_server_name(value):
            raise ValueError(f"not a valid server name: {value!r}")
        return value

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def signing_key_file(self) -> Path:
        return self.data_path / self.signing_key_path

    @property
    def database_url(self) -> str:
        """The URL with a relative SQLite path resolved against the data directory."""
        prefix = "sqlite+aiosqlite:///"
        url = self.database.url
        if url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
            rest = url[len(prefix) :]
            if rest and rest != ":memory:":
                return prefix + str((self.data_path / rest).resolve())
        return url

    @property
    def base_url(self) -> str:
        if self.public_baseurl:
            return self.public_baseurl.rstrip("/") + "/"
        host = "localhost" if self.listen.host in ("0.0.0.0", "::") else self.listen.host
        scheme = "https" if self.listen.tls else "http"
        return f"{scheme}://{host}:{self.listen.port}/"


class ConfigError(Exception):
    pass


ENV_PREFIX = "HS_"


def _overlay_environ(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``HS_DATABASE__URL=...`` sets ``database.url``; values are parsed as YAML scalars."""
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = yaml.safe_load(raw) if raw else raw
    return data


def parse_config(
    data: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> HomeserverConfig:
    merged = _overlay_environ(dict(data), environ if environ is not None else {})
    try:
        return HomeserverConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(str(e)) from e


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> HomeserverConfig:
    """Read the YAML file at ``path`` and overlay ``HS_`` variables from ``environ``."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    config = parse_config(data, os.environ if environ is None else environ)
    if not Path(config.data_dir).is_absolute():
        # A relative data directory is relative to the config file, not the working directory.
        config = config.model_copy(update={"data_dir": str(path.parent / config.data_dir)})
    if config.app_service_config_files:
        files = tuple(str(path.parent / f) for f in config.app_service_config_files)
        config = config.model_copy(update={"app_service_config_files": files})
    return config


def default_config_yaml(server_name: str = "localhost", data_dir: str = "data") -> str:
    return (
        f"# Generated on first run; every key is documented in docs/config.md.\n"
        f"server_name: {server_name}\n"
        f"data_dir: {data_dir}\n"
        f"signing_key_path: signing.key\n"
        f"listen:\n  host: 127.0.0.1\n  port: 8008\n"
        f"database:\n  url: sqlite+aiosqlite:///homeserver.db\n"
        f"registration:\n  enabled: false\n"
    )
