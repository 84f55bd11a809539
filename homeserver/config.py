"""The one config object: a frozen pydantic tree read from YAML with ``HS_`` overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from homeserver.ids import is_valid_server_name


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8008, ge=0, le=65535)


class DatabaseConfig(Section):
    # SQLite (WAL) in the data directory is the embedded default; PostgreSQL is
    # "postgresql+asyncpg://user@host:5432/dbname".
    url: str = "sqlite+aiosqlite:///homeserver.db"
    pool_size: int = Field(default=10, ge=1)


class RegistrationConfig(Section):
    enabled: bool = False  # closed by default: accounts come from tokens or ``register-user``
    require_token: bool = False  # with enabled: every registration needs a registration token
    tokens: tuple[str, ...] = ()  # static registration tokens, usable without limit
    min_password_length: int = Field(default=8, ge=1)


class RateLimit(Section):
    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitsConfig(Section):
    enabled: bool = True
    login: RateLimit = RateLimit(per_second=0.2, burst=5)
    registration: RateLimit = RateLimit(per_second=0.2, burst=5)
    message: RateLimit = RateLimit(per_second=10, burst=50)
    join: RateLimit = RateLimit(per_second=0.5, burst=10)


class AuthConfig(Section):
    # Access tokens expire when refresh tokens are used; long-lived otherwise (spec: optional).
    access_token_lifetime_ms: int = Field(default=5 * 60 * 1000, ge=1000)
    token_cache_size: int = Field(default=10_000, ge=0)
    # argon2id cost; the defaults are OWASP's minimum for argon2id (19 MiB, 2 passes).
    password_hash_memory_kib: int = Field(default=19_456, ge=8)
    password_hash_time_cost: int = Field(default=2, ge=1)


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
    limits: LimitsConfig = LimitsConfig()
    rooms: RoomsConfig = RoomsConfig()
    websocket: WebSocketConfig = WebSocketConfig()
    presence: PresenceConfig = PresenceConfig()

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
        if url.startswith(prefix) and not url[len(prefix):].startswith("/"):
            rest = url[len(prefix):]
            if rest and rest != ":memory:":
                return prefix + str((self.data_path / rest).resolve())
        return url

    @property
    def base_url(self) -> str:
        if self.public_baseurl:
            return self.public_baseurl.rstrip("/") + "/"
        host = "localhost" if self.listen.host in ("0.0.0.0", "::") else self.listen.host
        return f"http://{host}:{self.listen.port}/"


class ConfigError(Exception):
    pass


ENV_PREFIX = "HS_"


def _overlay_environ(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``HS_DATABASE__URL=...`` sets ``database.url``; values are parsed as YAML scalars."""
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = yaml.safe_load(raw) if raw else raw
    return data


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None
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
