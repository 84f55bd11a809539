"""Server discovery: which address, port, ``Host`` header and certificate name a request to
a server name uses, in the order of the spec ("Resolving server names"):

1. an IP literal: that address, its port or 8448; ``Host`` is the server name;
2. a hostname with a port: the hostname's addresses and that port;
3. ``https://<hostname>/.well-known/matrix/server`` names a delegated server, resolved by
   3.1-3.5 (IP literal, explicit port, SRV ``_matrix-fed._tcp``, SRV ``_matrix._tcp``, 8448);
4-6. otherwise SRV ``_matrix-fed._tcp.<hostname>``, SRV ``_matrix._tcp.<hostname>``, then
   the hostname on 8448.

After delegation the certificate must be for the delegated hostname; after an SRV record,
for the name whose record it is (never the SRV target: DNS is not authenticated, TLS is).
Addresses are resolved and checked later, by the outbound transport, when it connects.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import cachetools
import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx

from homeserver.core.clock import Clock
from homeserver.core.errors import MatrixError
from homeserver.core.ids import is_valid_server_name
from homeserver.core.json_limits import loads_limited
from homeserver.net.outbound import OutboundClient, OutboundError, Reason

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8448  # spec: the federation port when nothing else names one
# spec, "Resolving server names": a well-known answer is cached as its Cache-Control says,
# 24 hours without one, 48 hours at most; errors up to an hour, with back-off.
WELL_KNOWN_DEFAULT_TTL_MS = 24 * 3600 * 1000
WELL_KNOWN_MAX_TTL_MS = 48 * 3600 * 1000
# A floor, so that "no-store" or "max-age=0" cannot make us fetch it for every request.
WELL_KNOWN_MIN_TTL_MS = 5 * 60 * 1000
WELL_KNOWN_INVALID_TTL_MS = 3600 * 1000  # a non-200, not JSON, no or a bad m.server
# An unreachable well-known: retried after 2 minutes, doubling per failure up to an hour.
WELL_KNOWN_RETRY_FIRST_MS = 2 * 60 * 1000
WELL_KNOWN_RETRY_MAX_MS = 3600 * 1000
WELL_KNOWN_MAX_BYTES = 50 * 1024
WELL_KNOWN_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where a request to a server goes and how it presents itself."""

    host: str  # connected to: an IP address or a name the transport resolves (A/AAAA)
    port: int
    host_header: str
    tls_name: str  # the certificate must be for this name or IP (sent as SNI unless an IP)

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


SrvLookup = Callable[[str], Awaitable[Sequence[SrvRecord]]]


def split_server_name(name: str) -> tuple[str, int | None]:
    """The host (IPv6 without brackets) and port of a server name; ValueError if invalid."""
    if not is_valid_server_name(name):
        raise ValueError(f"invalid server name: {name!r}")
    if name.startswith("["):
        host, _, rest = name[1:].partition("]")
        ipaddress.IPv6Address(host)  # ValueError names it
        port_text = rest[1:] if rest.startswith(":") else None
    else:
        host, sep, port_text_or_empty = name.rpartition(":")
        if not sep:
            host, port_text = name, None
        else:
            port_text = port_text_or_empty
    port = None
    if port_text is not None:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid port in server name: {name!r}")
    return host, port


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def order_srv(records: Sequence[SrvRecord]) -> list[SrvRecord]:
    """RFC 2782 order: by priority, and by weighted chance within one priority. A lone
    record with target "." says the service is not offered: no records."""
    usable = [r for r in records if r.target not in ("", ".")]
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in usable}):
        group = [r for r in usable if r.priority == priority]
        while group:
            total = sum(r.weight for r in group)
            pick = random.randint(0, total) if total else 0
            for i, r in enumerate(group):
                pick -= r.weight
                if pick <= 0 or i == len(group) - 1:
                    out.append(group.pop(i))
                    break
    return out


class DnsSrvLookup:
    """SRV records through dnspython's resolver (its cache honours the records' TTLs).

    ``nameservers``: ask these (``(address, port)``) instead of the system's (tests)."""

    def __init__(
        self, timeout_s: float = 5.0, nameservers: Sequence[tuple[str, int]] | None = None
    ) -> None:
        self._timeout_s = timeout_s
        self._nameservers = nameservers
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        # Built on first use: reading the system's configuration may fail (no
        # resolv.conf), which must not stop a server that never needs SRV.
        if self._resolver is None:
            if self._nameservers is None:
                resolver = dns.asyncresolver.Resolver()
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [host for host, _ in self._nameservers]
                resolver.port = self._nameservers[0][1]
            resolver.cache = dns.resolver.Cache()
            resolver.lifetime = self._timeout_s
            self._resolver = resolver
        return self._resolver

    async def __call__(self, name: str) -> list[SrvRecord]:
        try:
            answer = await self._get_resolver().resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as e:
            # A failed lookup counts as no record: the next step of discovery is tried.
            logger.info("SRV lookup failed", extra={"name": name, "error": type(e).__name__})
            return []
        return [
            SrvRecord(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
            for r in answer
        ]


@dataclass(frozen=True, slots=True)
class WellKnownAnswer:
    status_code: int
    headers: httpx.Headers
    body: bytes


WellKnownFetch = Callable[[str], Awaitable[WellKnownAnswer]]


class HttpsWellKnownFetch:
    """GET https://<hostname>/.well-known/matrix/server through the outbound transport,
    following redirects (each hop checked, a bounded number of them)."""

    def __init__(self, client: OutboundClient, port: int = 443) -> None:
        self._client = client
        self._port = port  # tests serve their well-known on a free loopback port

    async def __call__(self, hostname: str) -> WellKnownAnswer:
        authority = hostname if self._port == 443 else f"{hostname}:{self._port}"
        response = await self._client.request(
            "GET",
            f"https://{authority}/.well-known/matrix/server",
            max_bytes=WELL_KNOWN_MAX_BYTES,
        )
        return WellKnownAnswer(response.status_code, response.headers, response.body)


def cache_ttl_ms(headers: httpx.Headers, now_ms: int) -> int:
    """The lifetime a successful answer's headers give it, within our floor and ceiling."""
    ttl: int | None = None
    directives = [d.strip().lower() for d in headers.get("cache-control", "").split(",")]
    for directive in directives:
        if directive in ("no-store", "no-cache"):
            ttl = 0
        elif directive.startswith("max-age="):
            try:
                ttl = max(0, int(directive[len("max-age=") :])) * 1000
            except ValueError:
                continue
    if ttl is None and "expires" in headers:
        try:
            ttl = int(parsedate_to_datetime(headers["expires"]).timestamp() * 1000) - now_ms
        except (TypeError, ValueError):
            ttl = None
    if ttl is None:
        ttl = WELL_KNOWN_DEFAULT_TTL_MS
    return max(WELL_KNOWN_MIN_TTL_MS, min(ttl, WELL_KNOWN_MAX_TTL_MS))


def parse_well_known(body: bytes) -> str | None:
    """The valid ``m.server`` of a well-known body, or None."""
    try:
        data = loads_limited(body)
    except MatrixError:
        return None
    if not isinstance(data, dict):
        return None
    server = data.get("m.server")
    if not isinstance(server, str):
        return None
    try:
        split_server_name(server)
    except ValueError:
        return None
    return server


@dataclass(slots=True)
class _Cached:
    delegated: str | None
    expires_ms: int
    failures: int  # consecutive unreachable fetches (the back-off's exponent)


class WellKnownResolver:
    """``/.well-known/matrix/server`` lookups, cached as the spec recommends."""

    def __init__(self, fetch: WellKnownFetch, clock: Clock) -> None:
        self._fetch = fetch
        self._clock = clock
        self._cache: cachetools.LRUCache[str, _Cached] = cachetools.LRUCache(WELL_KNOWN_CACHE_SIZE)

    async def delegated(self, hostname: str) -> str | None:
        """The delegated server name of ``hostname``, or None when it delegates nothing."""
        now = self._clock.now_ms()
        cached = self._cache.get(hostname)
        if cached is not None and cached.expires_ms > now:
            return cached.delegated
        try:
            answer = await self._fetch(hostname)
        except OutboundError as e:
            failures = 1 if cached is None else cached.failures + 1
            retry = min(WELL_KNOWN_RETRY_FIRST_MS * 2 ** (failures - 1), WELL_KNOWN_RETRY_MAX_MS)
            # A delegation we had stays in use while its server cannot be reached: a
            # well-known host that is briefly down does not move the whole server.
            previous = None if cached is None else cached.delegated
            self._cache[hostname] = _Cached(previous, now + retry, failures)
            if e.reason is not Reason.UNRESOLVABLE:
                logger.info(
                    "well-known unreachable", extra={"server": hostname, "reason": e.reason}
                )
            return previous
        delegated = parse_well_known(answer.body) if answer.status_code == 200 else None
        if delegated is None:
            self._cache[hostname] = _Cached(None, now + WELL_KNOWN_INVALID_TTL_MS, 0)
            return None
        self._cache[hostname] = _Cached(delegated, now + cache_ttl_ms(answer.headers, now), 0)
        return delegated


class ServerResolver:
    """Server name -> the addresses to try, in order."""

    def __init__(self, well_known: WellKnownResolver, srv: SrvLookup) -> None:
        self._well_known = well_known
        self._srv = srv

    async def resolve(self, server_name: str) -> list[ServerAddress]:
        host, port = split_server_name(server_name)
        if is_ip_literal(host):  # step 1
            return [ServerAddress(host, port or DEFAULT_PORT, server_name, host)]
        if port is not None:  # step 2
            return [ServerAddress(host, port, server_name, host)]
        delegated = await self._well_known.delegated(host)  # step 3
        if delegated is not None:
            d_host, d_port = split_server_name(delegated)
            if is_ip_literal(d_host):  # 3.1
                return [ServerAddress(d_host, d_port or DEFAULT_PORT, delegated, d_host)]
            if d_port is not None:  # 3.2
                return [ServerAddress(d_host, d_port, delegated, d_host)]
            return await self._srv_or_default(d_host)  # 3.3-3.5
        return await self._srv_or_default(host)  # steps 4-6

    async def _srv_or_default(self, host: str) -> list[ServerAddress]:
        for service in ("_matrix-fed._tcp", "_matrix._tcp"):  # the second is deprecated
            records = order_srv(await self._srv(f"{service}.{host}"))
            if records:
                return [ServerAddress(r.target, r.port, host, host) for r in records]
        return [ServerAddress(host, DEFAULT_PORT, host, host)]
