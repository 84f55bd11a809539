"""Type aliases and small types shared across layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID

# A JSON object as parsed from the wire: events in PDU form and the `content` the spec leaves open.
JsonDict: TypeAlias = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is making a request: the authenticated user and device."""

    user_id: UserID
    device_id: str
    token_id: int
    is_admin: bool = False
    is_guest: bool = False
    # Set when an application service's as_token made the request (acting as its sender or
    # as a user of its namespaces): the service's ID, and whether its rate limits apply.
    app_service_id: str | None = None
    rate_limited: bool = True
    # Set by the server's administrators (the admin API): a shadow-banned user's sends look
    # successful but reach nobody; a suspended one may read and leave, not act
    # (spec, "Account suspension").
    shadow_banned: bool = False
    suspended: bool = False

    def check_not_suspended(self) -> None:
        """spec, "Account suspension": 403 ``M_USER_SUSPENDED`` on what a suspended user
        may not do (send, join, knock, invite, change their profile, redact others)."""
        if self.suspended:
            raise MatrixError(
                Codes.USER_SUSPENDED, "You cannot perform this action while suspended"
            )
