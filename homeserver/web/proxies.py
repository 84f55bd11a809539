"""The client's address behind a load balancer (``listen.trusted_proxies``).

A request that comes from a trusted proxy is taken to come from the address its
``X-Forwarded-For`` names: read from the right, the first address that is not itself a
trusted proxy (each proxy appends the address it was reached from, so what is left of an
untrusted hop may be made up by the client). Everything downstream (per-IP rate limits,
session records, logs) sees it as ``scope["client"]``. From any other peer the header is
ignored, so a client cannot choose its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

ASGIApp = Any
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries)


class TrustedProxiesMiddleware:
    def __init__(self, app: ASGIApp, networks: tuple[Network, ...]) -> None:
        self.app = app
        self._networks = networks

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._networks and scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if client is not None and self._trusted(client[0]):
                forwarded = _forwarded_for(scope.get("headers", ()))
                if forwarded:
                    address = self._client_of(forwarded)
                    if address is not None:
                        scope = {**scope, "client": (address, 0)}
        await self.app(scope, receive, send)

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def _client_of(self, hops: list[str]) -> str | None:
        """The rightmost hop that is not a trusted proxy; None if a hop is not an address
        (the peer's own address stays)."""
        for hop in reversed(hops):
            try:
                address = ipaddress.ip_address(hop)
            except ValueError:
                return None
            if not any(address in network for network in self._networks):
                return str(address)
        return hops[0]  # every hop is a proxy of ours: the first one is the origin


def _forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    hops: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            text = value.decode("latin-1")
            hops.extend(h.strip() for h in text.split(",") if h.strip())
    return hops
