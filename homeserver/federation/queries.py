"""Queries we ask of other servers about their users and aliases (spec, "Querying for
information"), for the services that answer clients about remote users."""

from __future__ import annotations

from typing import Any

from homeserver.core.ids import UserID
from homeserver.federation.client import FederationClient


class FederationQueries:
    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def query_profile(self, user_id: UserID) -> Any:
        """GET /_matrix/federation/v1/query/profile on the user's server."""
        return await self._client.get_json(
            user_id.server_name,
            "/_matrix/federation/v1/query/profile",
            query={"user_id": user_id},
        )
