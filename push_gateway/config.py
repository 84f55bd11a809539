"""The gateway's own small config: where it listens and, per ``app_id``, a backend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from homeserver.core.config import OutboundConfig, moved_to_outbound


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=5000, ge=0, le=65535)


class WebPushApp(Section):
    type: Literal["webpush"]
    # The VAPID key (RFC 8292): a PEM file, or the raw private key in base64url.
    vapid_private_key_file: str | None = None
    vapid_private_key: str | None = None
    vapid_contact: str  # "mailto:admin@example.org", the JWT's sub
    ttl_s: int = Field(default=24 * 3600, ge=0)  # how long the push service keeps a push
    max_payload_bytes: int = Field(default=3000, ge=256)  # push services accept ~4 KiB

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return moved_to_outbound(data, "allow_private_endpoints", "apps.<app_id>")


class ApnsApp(Section):
    type: Literal["apns"]
    team_id: str
    key_id: str
    key_file: str  # the .p8 (PEM, P-256) auth key
    topic: str  # the app's bundle ID
    base_url: str = "https://api.push.apple.com"  # sandbox: https://api.sandbox.push.apple.com
    ca_file: str | None = None  # trust this CA too (a test server)


class FcmApp(Section):
    type: Literal["fcm"]
    service_account_file: str  # the JSON key of a service account of the Firebase project
    base_url: str = "https://fcm.googleapis.com"
    token_uri: str | None = None  # default: the service account's token_uri
    ca_file: str | None = None


AppConfig = Annotated[WebPushApp | ApnsApp | FcmApp, Field(discriminator="type")]


class GatewayConfig(Section):
    listen: ListenConfig = ListenConfig()
    request_timeout_s: float = Field(default=10.0, gt=0)
    apps: dict[str, AppConfig] = {}
    # SSRF: WebPush endpoints come from clients; addresses that are not public are refused
    # unless listed here (as the homeserver's outbound.allow_addresses).
    outbound: OutboundConfig = OutboundConfig()


class GatewayConfigError(Exception):
    pass


def parse_gateway_config(data: Any) -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data or {})
    except ValidationError as e:
        raise GatewayConfigError(str(e)) from e


def load_gateway_config(path: Path) -> GatewayConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise GatewayConfigError(f"cannot read {path}: {e}") from e
    return parse_gateway_config(data)
