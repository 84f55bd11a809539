"""Type aliases and small types shared across layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

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
    # Set when an application service's as_token made the request (acting as its sender or
    # as a user of its namespaces): the service's ID, and whether its rate limits apply.
    app_service_id: str | None = None
    rate_limited: bool = True
