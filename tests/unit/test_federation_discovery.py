"""Server discovery in the spec's order, the well-known cache, and SRV ordering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from homeserver.core.clock import FakeClock
from homeserver.federation.client import ssl_context
from homeserver.federation.discovery import (
    WELL_KNOWN_DEFAULT_TTL_MS,
    WELL_KNOWN_INVALID_TTL_MS,
    WELL_KNOWN_MAX_TTL_MS,
    WELL_KNOWN_MIN_TTL_MS,
    WELL_KNOWN_RETRY_FIRST_MS,
    HttpsWellKnownFetch,
    ServerAddress,
    ServerResolver,
    SrvRecord,
    WellKnownAnswer,
    WellKnownResolver,
    cache_ttl_ms,
    order_srv,
    split_server_name,
)
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound, OutboundError, Reason
from tests.e2e.conftest import free_port
from tests.tls_helpers import make_certificate


class FakeWellKnown:
    def __init__(self) -> None:
        self.answers: dict[str, WellKnownAnswer | OutboundError] = {}
        self.calls: list[str] = []

    def set(self, host: str, body: bytes, status: int = 200, **headers: str) -> None:
        self.answers[host] = WellKnownAnswer(status, httpx.Headers(headers), body)

    async def __call__(self, hostname: str) -> WellKnownAnswer:
        self.calls.append(hostname)
        answer = self.answers.get(hostname)
        if answer is None:
            raise OutboundError(Reason.UNREACHABLE, "connection refused")
        if isinstance(answer, OutboundError):
            raise answer
        return answer


class FakeSrv:
    def __init__(self, records: dict[str, list[SrvRecord]] | None = None) -> None:
        self.records = records or {}
        self.calls: list[str] = []

    async def __call__(self, name: str) -> list[SrvRecord]:
        self.calls.append(name)
        return self.records.get(name, [])


def resolver(
    well_known: FakeWellKnown, srv: FakeSrv, clock: FakeClock | None = None
) -> ServerResolver:
    return ServerResolver(WellKnownResolver(well_known, clock or FakeClock()), srv)


def test_split_server_name() -> None:
    assert split_server_name("example.org") == ("example.org", None)
    assert split_server_name("example.org:8449") == ("example.org", 8449)
    assert split_server_name("1.2.3.4:80") == ("1.2.3.4", 80)
    assert split_server_name("[::1]") == ("::1", None)
    assert split_server_name("[2001:db8::1]:8448") == ("2001:db8::1", 8448)
    for bad in ("", "exa mple.org", "example.org:", "example.org:0", "example.org:99999", "[zz]"):
        with pytest.raises(ValueError):
            split_server_name(bad)


async def test_ip_literal_uses_its_port_or_8448_and_the_server_name_as_host() -> None:
    wk, srv = FakeWellKnown(), FakeSrv()
    r = resolver(wk, srv)
    assert await r.resolve("1.2.3.4") == [ServerAddress("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")]
    assert await r.resolve("[2001:db8::1]:9000") == [
        ServerAddress("2001:db8::1", 9000, "[2001:db8::1]:9000", "2001:db8::1")
    ]
    assert (await r.resolve("[::1]"))[0].url_host == "[::1]"
    assert wk.calls == [] and srv.calls == []  # no well-known, no SRV for an IP literal


async def test_explicit_port_skips_well_known_and_srv() -> None:
    wk, srv = FakeWellKnown(), FakeSrv()
    got = await resolver(wk, srv).resolve("example.org:8449")
    assert got == [ServerAddress("example.org", 8449, "example.org:8449", "example.org")]
    assert wk.calls == [] and srv.calls == []


async def test_well_known_delegation_to_ip_and_to_hostname_with_port() -> None:
    wk, srv = FakeWellKnown(), FakeSrv()
    wk.set("a.org", b'{"m.server": "5.6.7.8"}')
    wk.set("b.org", b'{"m.server": "[2001:db8::2]:1234"}')
    wk.set("c.org", b'{"m.server": "matrix.c.org:443"}')
    r = resolver(wk, srv)
    assert await r.resolve("a.org") == [ServerAddress("5.6.7.8", 8448, "5.6.7.8", "5.6.7.8")]
    assert await r.resolve("b.org") == [
        ServerAddress("2001:db8::2", 1234, "[2001:db8::2]:1234", "2001:db8::2")
    ]
    assert await r.resolve("c.org") == [
        ServerAddress("matrix.c.org", 443, "matrix.c.org:443", "matrix.c.org")
    ]
    assert srv.calls == []


async def test_delegated_hostname_without_port_uses_srv_of_the_delegated_name() -> None:
    wk = FakeWellKnown()
    wk.set("d.org", b'{"m.server": "matrix.d.org"}')
    srv = FakeSrv({"_matrix-fed._tcp.matrix.d.org": [SrvRecord(10, 0, 8443, "host1.d.org")]})
    got = await resolver(wk, srv).resolve("d.org")
    # Connect to the SRV target, but Host and the certificate are the delegated name's.
    assert got == [ServerAddress("host1.d.org", 8443, "matrix.d.org", "matrix.d.org")]


async def test_delegated_hostname_falls_back_to_deprecated_srv_then_8448() -> None:
    wk = FakeWellKnown()
    wk.set("e.org", b'{"m.server": "matrix.e.org"}')
    srv = FakeSrv({"_matrix._tcp.matrix.e.org": [SrvRecord(10, 0, 8500, "old.e.org.")]})
    r = resolver(wk, srv)
    assert await r.resolve("e.org") == [
        ServerAddress("old.e.org.", 8500, "matrix.e.org", "matrix.e.org")
    ]
    assert srv.calls == ["_matrix-fed._tcp.matrix.e.org", "_matrix._tcp.matrix.e.org"]
    wk.set("f.org", b'{"m.server": "matrix.f.org"}')
    assert await r.resolve("f.org") == [
        ServerAddress("matrix.f.org", 8448, "matrix.f.org", "matrix.f.org")
    ]


async def test_no_well_known_uses_srv_of_the_hostname_then_8448() -> None:
    wk = FakeWellKnown()
    wk.set("g.org", b"not json")
    srv = FakeSrv(
        {
            "_matrix-fed._tcp.g.org": [SrvRecord(10, 0, 8448, "fed.g.org")],
            "_matrix._tcp.h.org": [SrvRecord(10, 0, 8449, "old.h.org")],
        }
    )
    r = resolver(wk, srv)
    assert await r.resolve("g.org") == [ServerAddress("fed.g.org", 8448, "g.org", "g.org")]
    assert await r.resolve("h.org") == [ServerAddress("old.h.org", 8449, "h.org", "h.org")]
    assert await r.resolve("i.org") == [ServerAddress("i.org", 8448, "i.org", "i.org")]


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"{}",
        b'{"m.server": 5}',
        b'{"m.server": "bad name!"}',
        b'{"m.server": "x.org:70000"}',
        b'{"m.server": ""}',
        # Past the JSON limits of homeserver.core.json_limits: no answer.
        b'{"m.server": "x.org", "n": 1152921504606846976}',
        b'{"m.server": "x.org", "a": ' + b"[" * 101 + b"]" * 101 + b"}",
    ],
)
async def test_invalid_well_known_is_ignored(body: bytes) -> None:
    wk = FakeWellKnown()
    wk.set("j.org", body)
    got = await resolver(wk, FakeSrv()).resolve("j.org")
    assert got == [ServerAddress("j.org", 8448, "j.org", "j.org")]


async def test_non_200_well_known_is_ignored() -> None:
    wk = FakeWellKnown()
    wk.set("k.org", b'{"m.server": "matrix.k.org:443"}', status=404)
    got = await resolver(wk, FakeSrv()).resolve("k.org")
    assert got == [ServerAddress("k.org", 8448, "k.org", "k.org")]


def test_cache_lifetime_from_headers() -> None:
    now = 1_700_000_000_000
    assert cache_ttl_ms(httpx.Headers(), now) == WELL_KNOWN_DEFAULT_TTL_MS
    assert cache_ttl_ms(httpx.Headers({"cache-control": "max-age=7200"}), now) == 7_200_000
    assert (
        cache_ttl_ms(httpx.Headers({"cache-control": "public, max-age=999999999"}), now)
        == WELL_KNOWN_MAX_TTL_MS
    )
    assert cache_ttl_ms(httpx.Headers({"cache-control": "no-store"}), now) == (
        WELL_KNOWN_MIN_TTL_MS
    )
    assert cache_ttl_ms(httpx.Headers({"cache-control": "max-age=abc"}), now) == (
        WELL_KNOWN_DEFAULT_TTL_MS
    )
    expires = "Tue, 14 Nov 2023 23:13:20 GMT"  # now + 1 h
    assert cache_ttl_ms(httpx.Headers({"expires": expires}), now) == 3_600_000
    assert cache_ttl_ms(httpx.Headers({"expires": "garbage"}), now) == WELL_KNOWN_DEFAULT_TTL_MS


async def test_well_known_is_cached_for_its_lifetime() -> None:
    clock = FakeClock()
    wk = FakeWellKnown()
    wk.set("l.org", b'{"m.server": "matrix.l.org:443"}', **{"cache-control": "max-age=3600"})
    cache = WellKnownResolver(wk, clock)
    assert await cache.delegated("l.org") == "matrix.l.org:443"
    clock.advance(3_599_000)
    assert await cache.delegated("l.org") == "matrix.l.org:443"
    assert wk.calls == ["l.org"]
    clock.advance(2_000)
    wk.set("l.org", b'{"m.server": "other.l.org:443"}')
    assert await cache.delegated("l.org") == "other.l.org:443"
    assert wk.calls == ["l.org", "l.org"]


async def test_invalid_well_known_is_cached_for_an_hour() -> None:
    clock = FakeClock()
    wk = FakeWellKnown()
    wk.set("m.org", b"{}")
    cache = WellKnownResolver(wk, clock)
    assert await cache.delegated("m.org") is None
    clock.advance(WELL_KNOWN_INVALID_TTL_MS - 1)
    assert await cache.delegated("m.org") is None
    assert len(wk.calls) == 1
    clock.advance(2)
    await cache.delegated("m.org")
    assert len(wk.calls) == 2


async def test_unreachable_well_known_backs_off_and_keeps_the_last_delegation() -> None:
    clock = FakeClock()
    wk = FakeWellKnown()
    wk.set("n.org", b'{"m.server": "matrix.n.org:443"}', **{"cache-control": "max-age=600"})
    cache = WellKnownResolver(wk, clock)
    assert await cache.delegated("n.org") == "matrix.n.org:443"
    del wk.answers["n.org"]  # now it times out / refuses
    clock.advance(601_000)
    assert await cache.delegated("n.org") == "matrix.n.org:443"
    assert len(wk.calls) == 2
    # Retried after 2 minutes, then 4: the back-off doubles.
    clock.advance(WELL_KNOWN_RETRY_FIRST_MS - 1)
    await cache.delegated("n.org")
    assert len(wk.calls) == 2
    clock.advance(2)
    assert await cache.delegated("n.org") == "matrix.n.org:443"
    assert len(wk.calls) == 3
    clock.advance(2 * WELL_KNOWN_RETRY_FIRST_MS - 1)
    await cache.delegated("n.org")
    assert len(wk.calls) == 3
    clock.advance(2)
    await cache.delegated("n.org")
    assert len(wk.calls) == 4


async def test_unreachable_well_known_without_history_means_no_delegation() -> None:
    wk = FakeWellKnown()
    srv = FakeSrv({"_matrix-fed._tcp.o.org": [SrvRecord(1, 0, 443, "fed.o.org")]})
    got = await resolver(wk, srv).resolve("o.org")
    assert got == [ServerAddress("fed.o.org", 443, "o.org", "o.org")]


def test_srv_order_by_priority_and_dot_target_means_none() -> None:
    records = [
        SrvRecord(20, 0, 1, "c"),
        SrvRecord(10, 5, 1, "a"),
        SrvRecord(10, 5, 1, "b"),
        SrvRecord(30, 0, 1, "."),
    ]
    ordered = order_srv(records)
    assert {r.target for r in ordered[:2]} == {"a", "b"}
    assert [r.target for r in ordered[2:]] == ["c"]
    assert order_srv([SrvRecord(0, 0, 0, ".")]) == []


# --- a real well-known over HTTPS on loopback ---------------------------------------------


@pytest.fixture
async def well_known_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    cert = make_certificate(tmp_path / "tls")

    async def well_known(request: Request) -> Response:
        return JSONResponse(
            {"m.server": "delegated.example:8448"}, headers={"cache-control": "max-age=60"}
        )

    async def moved(request: Request) -> Response:
        return RedirectResponse("/real-well-known", status_code=302)

    # The well-known redirects (spec: 30x are followed), each hop checked like the first.
    app = Starlette(
        routes=[
            Route("/.well-known/matrix/server", moved),
            Route("/real-well-known", well_known),
        ]
    )
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert.cert_path),
        ssl_keyfile=str(cert.key_path),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port, cert.ca_path
    finally:
        server.should_exit = True
        await task


async def _loopback_only(host: str, port: int) -> list[object]:
    import ipaddress

    assert host == "localhost"
    return [ipaddress.ip_address("127.0.0.1")]


async def test_well_known_over_https_on_loopback(well_known_server: tuple[int, Path]) -> None:
    port, ca = well_known_server
    outbound = Outbound(AddressPolicy(["127.0.0.1/32"]), resolver=_loopback_only)  # type: ignore[arg-type]
    async with outbound.client(timeout_s=5, max_redirects=2, verify=ssl_context(str(ca))) as c:
        fetch = HttpsWellKnownFetch(c, port=port)
        answer = await fetch("localhost")
        assert answer.status_code == 200
        cache = WellKnownResolver(fetch, FakeClock())
        assert await cache.delegated("localhost") == "delegated.example:8448"


async def test_well_known_refused_without_the_ca_or_the_allow_list(
    well_known_server: tuple[int, Path],
) -> None:
    port, ca = well_known_server
    # Our CA not trusted: the certificate check fails.
    outbound = Outbound(AddressPolicy(["127.0.0.1/32"]), resolver=_loopback_only)  # type: ignore[arg-type]
    async with outbound.client(timeout_s=5, verify=ssl_context(None)) as c:
        with pytest.raises(OutboundError) as e:
            await HttpsWellKnownFetch(c, port=port)("localhost")
        assert e.value.reason is Reason.UNREACHABLE
    # Loopback not allowed: refused before connecting.
    refused = Outbound(AddressPolicy(), resolver=_loopback_only)  # type: ignore[arg-type]
    async with refused.client(timeout_s=5, verify=ssl_context(str(ca))) as c:
        with pytest.raises(OutboundError) as e:
            await HttpsWellKnownFetch(c, port=port)("localhost")
        assert e.value.reason is Reason.REFUSED


# --- SRV through dnspython, from a DNS server on loopback -----------------------------------


class _DnsServer(asyncio.DatagramProtocol):
    """Answers SRV queries from a table; NXDOMAIN for any other name."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        import dns.message
        import dns.rcode
        import dns.rrset

        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text()
        if name in self.records:
            response.answer.append(
                dns.rrset.from_text_list(name, 300, "IN", "SRV", self.records[name])
            )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


async def test_srv_lookup_through_dnspython() -> None:
    from homeserver.federation.discovery import DnsSrvLookup

    server = _DnsServer(
        {
            "_matrix-fed._tcp.p.example.": ["10 5 8449 fed.p.example.", "20 0 8450 backup.p."],
            "_matrix._tcp.q.example.": ["0 0 8448 ."],
        }
    )
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        lookup = DnsSrvLookup(timeout_s=2, nameservers=[("127.0.0.1", port)])
        got = await lookup("_matrix-fed._tcp.p.example")
        assert sorted(got, key=lambda r: r.priority) == [
            SrvRecord(10, 5, 8449, "fed.p.example"),
            SrvRecord(20, 0, 8450, "backup.p"),
        ]
        assert await lookup("_matrix-fed._tcp.nothing.example") == []
        # A "." target: the service is not offered; resolution goes on to 8448.
        r = ServerResolver(WellKnownResolver(FakeWellKnown(), FakeClock()), lookup)
        assert await r.resolve("q.example") == [
            ServerAddress("q.example", 8448, "q.example", "q.example")
        ]
        assert await r.resolve("p.example") == [
            ServerAddress("fed.p.example", 8449, "p.example", "p.example"),
            ServerAddress("backup.p", 8450, "p.example", "p.example"),
        ]
    finally:
        transport.close()
    # Nobody answers: no records, not an error.
    silent = DnsSrvLookup(timeout_s=0.2, nameservers=[("127.0.0.1", port)])
    assert await silent("_matrix-fed._tcp.p.example") == []
