"""Queries we ask of other servers about their users and aliases (spec, "Querying for
information"), for the services that answer clients about remote users."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.core.ids import RoomAlias, UserID
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

    async def query_directory(self, alias: RoomAlias) -> Any:
        """GET /_matrix/federation/v1/query/directory on the alias's server."""
        return await self._client.get_json(
            alias.server_name,
            "/_matrix/federation/v1/query/directory",
            query={"room_alias": alias},
        )

    async def query_user_keys(self, server_name: str, wanted: Mapping[str, Sequence[str]]) -> Any:
        """POST /_matrix/federation/v1/user/keys/query"""
        return await self._client.request(
            server_name,
            "POST",
            "/_matrix/federation/v1/user/keys/query",
            content={"device_keys": {u: list(d) for u, d in wanted.items()}},
        )

    async def claim_user_keys(
        self, server_name: str, wanted: Mapping[str, Mapping[str, str]]
    ) -> Any:
        """POST /_matrix/federation/v1/user/keys/claim"""
        return await self._client.request(
            server_name,
            "POST",
            "/_matrix/federation/v1/user/keys/claim",
            content={"one_time_keys": {u: dict(d) for u, d in wanted.items()}},
        )
