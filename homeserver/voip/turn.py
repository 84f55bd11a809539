"""TURN credentials for GET /voip/turnServer (the TURN REST API's shared-secret scheme).

coturn's ``use-auth-secret`` accepts a username ``<expiry in seconds>:<anything>`` whose
password is the base64 of HMAC-SHA1 over the username, keyed with the shared secret; the
server never has to be told about the user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from homeserver.core.clock import Clock
from homeserver.core.config import VoipConfig
from homeserver.core.types import JsonDict, Requester


class TurnService:
    def __init__(self, config: VoipConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock

    def credentials(self, requester: Requester) -> JsonDict:
        """The TURN servers and credentials for this user; ``{}`` when none are configured
        (or the requester is a guest and guests get none), which clients read as no TURN."""
        config = self._config
        if not config.turn_uris or config.turn_shared_secret is None:
            return {}
        if requester.is_guest and not config.turn_allow_guests:
            return {}
        ttl_s = config.turn_user_lifetime_ms // 1000
        expiry_s = self._clock.now_ms() // 1000 + ttl_s
        username = f"{expiry_s}:{requester.user_id}"
        return {
            "username": username,
            "password": turn_password(config.turn_shared_secret, username),
            "uris": list(config.turn_uris),
            "ttl": ttl_s,
        }


def turn_password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()
