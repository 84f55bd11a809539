"""A stand-in application service on loopback that records what the homeserver sends it, and
the registration files that point at it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.push_servers import LocalHTTP

AS_TOKEN = "as-secret-token"
HS_TOKEN = "hs-secret-token"


def registration(url: str | None, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "bridge",
        "url": url,
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "bridgebot",
        "rate_limited": False,
        "receive_ephemeral": True,
        "namespaces": {
            "users": [{"exclusive": True, "regex": "@bridge_.*:test"}],
            "aliases": [{"exclusive": True, "regex": "#bridge_.*:test"}],
            "rooms": [],
        },
        "protocols": ["irc"],
    }
    data.update(overrides)
    return data


def write_registration(path: Path, data: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


Hook = Callable[[str], Awaitable[bool]]


class FakeAppService:
    """Records transactions (by txnId, in arrival order), queries and pings; answers with
    ``status`` (transactions) and asks ``on_user``/``on_alias`` whether a queried user or
    alias now exists."""

    def __init__(self) -> None:
        self.transactions: list[tuple[str, dict[str, Any]]] = []
        self.authorizations: list[str | None] = []
        self.user_queries: list[str] = []
        self.alias_queries: list[str] = []
        self.pings: list[dict[str, Any]] = []
        self.lookups: list[tuple[str, dict[str, str]]] = []
        self.status = 200
        self.ping_status = 200
        self.on_user: Hook | None = None
        self.on_alias: Hook | None = None
        self.ping_delay: asyncio.Event | None = None  # the ping waits for it
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txn_id}", self._transaction)
        app.router.add_get("/_matrix/app/v1/users/{user_id}", self._user)
        app.router.add_get("/_matrix/app/v1/rooms/{alias}", self._alias)
        app.router.add_post("/_matrix/app/v1/ping", self._ping)
        app.router.add_get("/_matrix/app/v1/thirdparty/protocol/{protocol}", self._protocol)
        app.router.add_get("/_matrix/app/v1/thirdparty/{kind}/{protocol}", self._lookup)
        app.router.add_get("/_matrix/app/v1/thirdparty/{kind}", self._reverse)
        self.server = LocalHTTP(app)
        self.url = self.server.base_url

    async def __aenter__(self) -> FakeAppService:
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.__aexit__(*exc)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        self.authorizations.append(header)
        return header == f"Bearer {HS_TOKEN}"

    async def _transaction(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        if self.status != 200:
            return web.json_response({"errcode": "M_UNKNOWN"}, status=self.status)
        self.transactions.append((request.match_info["txn_id"], await request.json()))
        return web.json_response({})

    async def _user(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        user_id = request.match_info["user_id"]
        self.user_queries.append(user_id)
        if self.on_user is not None and await self.on_user(user_id):
            return web.json_response({})
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    async def _alias(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        alias = request.match_info["alias"]
        self.alias_queries.append(alias)
        if self.on_alias is not None and await self.on_alias(alias):
            return web.json_response({})
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    async def _ping(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        self.pings.append(await request.json())
        if self.ping_delay is not None:
            await self.ping_delay.wait()
        if self.ping_status != 200:
            return web.Response(text="bridge is sad", status=self.ping_status)
        return web.json_response({})

    async def _protocol(self, request: web.Request) -> web.Response:
        if not self._authorized(request) or request.match_info["protocol"] != "irc":
            return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)
        return web.json_response(
            {
                "user_fields": ["network", "nickname"],
                "location_fields": ["network", "channel"],
                "icon": "mxc://example.org/irc",
                "field_types": {
                    "network": {"regexp": "([a-z0-9]+\\.)*[a-z0-9]+", "placeholder": "irc.example"},
                    "nickname": {"regexp": "[^\\s#]+", "placeholder": "nick"},
                    "channel": {"regexp": "#[^\\s]+", "placeholder": "#channel"},
                },
                "instances": [
                    {
                        "desc": "Example IRC",
                        "fields": {"network": "irc.example"},
                        "network_id": "example",
                    }
                ],
            }
        )

    async def _lookup(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        kind, protocol = request.match_info["kind"], request.match_info["protocol"]
        self.lookups.append((f"{kind}/{protocol}", dict(request.query)))
        if kind == "location":
            return web.json_response(
                [
                    {
                        "alias": "#bridge_irc_test:test",
                        "protocol": protocol,
                        "fields": dict(request.query),
                    }
                ]
            )
        return web.json_response(
            [{"userid": "@bridge_nick:test", "protocol": protocol, "fields": dict(request.query)}]
        )

    async def _reverse(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        kind = request.match_info["kind"]
        self.lookups.append((kind, dict(request.query)))
        if kind == "location" and request.query.get("alias") == "#bridge_irc_test:test":
            return web.json_response(
                [{"alias": request.query["alias"], "protocol": "irc", "fields": {}}]
            )
        if kind == "user" and request.query.get("userid") == "@bridge_nick:test":
            return web.json_response(
                [{"userid": request.query["userid"], "protocol": "irc", "fields": {}}]
            )
        return web.json_response([])

    def events(self) -> list[dict[str, Any]]:
        return [e for _, body in self.transactions for e in body.get("events", [])]

    def ephemeral(self) -> list[dict[str, Any]]:
        return [e for _, body in self.transactions for e in body.get("ephemeral", [])]
