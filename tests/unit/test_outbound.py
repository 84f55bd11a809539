"""The outbound transport: which addresses it refuses, and that it connects to exactly the
address it checked (real loopback servers; DNS answers from an injected resolver)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from homeserver.net.addresses import AddressPolicy, is_public, refusal
from homeserver.net.outbound import Outbound, OutboundError, Reason
from tests.helpers import FakeResolver

REFUSED = [
    ("0.0.0.0", "this network"),
    ("0.1.2.3", "this network"),
    ("10.1.2.3", "private"),
    ("100.64.0.1", "shared (CGNAT)"),
    ("100.127.255.254", "shared (CGNAT)"),
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("169.254.169.254", "link-local"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.0.2.1", "documentation"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),  # never a real AAAA answer: refused whatever it holds
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    ("64:ff9b::7f00:1", "NAT64"),
    ("64:ff9b::808:808", "NAT64"),  # the translator, not the checked address, picks the v4
    ("64:ff9b:1::a00:1", "NAT64 (local use)"),
    ("100::1", "discard-only"),
    ("2001::1", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:2::1", "IETF protocol assignments"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2002:7f00:1::1", "6to4 of loopback"),
    ("2002:a00:1::1", "6to4 of private"),
    ("2002:a9fe:a9fe::1", "6to4 of link-local"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_each_address_class_is_refused(address: str, why: str) -> None:
    ip = ipaddress.ip_address(address)
    assert refusal(ip) == why
    assert not is_public(ip) and not AddressPolicy().allows(ip)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert AddressPolicy().allows(ipaddress.ip_address(address))


def test_allow_list() -> None:
    policy = AddressPolicy(["127.0.0.1/32", "10.0.0.0/8", "fd00::/8", "192.168.1.5"])
    for allowed in ("127.0.0.1", "10.9.8.7", "fd00::5", "192.168.1.5", "8.8.8.8"):
        assert policy.allows(ipaddress.ip_address(allowed)), allowed
    for refused in ("127.0.0.2", "192.168.1.6", "::1", "::ffff:127.0.0.1", "fe80::1"):
        assert not policy.allows(ipaddress.ip_address(refused)), refused
    with pytest.raises(ValueError, match="not-a-range"):
        AddressPolicy(["not-a-range"])


class Site:
    """A small HTTP/1.1 server on a loopback address; ``routes`` maps a path to raw headers
    and a body; it records what it received."""

    def __init__(self, host: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.context = context
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.hang: set[str] = set()
        self.requests: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Site:
        self._server = await asyncio.start_server(self._handle, self.host, 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            self.requests.append(head)
            path = head.split(" ", 2)[1]
            if path in self.hang:
                await asyncio.sleep(30)
            headers, body = self.routes.get(path, ("HTTP/1.1 404 Not Found", b""))
            writer.write(
                f"{headers}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with Site() as s:
        s.routes["/"] = ("HTTP/1.1 200 OK\r\nContent-Type: text/plain", b"hello")
        yield s


def _outbound(allow: Sequence[str] = (), dns: FakeResolver | None = None) -> Outbound:
    return Outbound(AddressPolicy(allow), resolver=dns or FakeResolver({}))


async def _reason(
    outbound: Outbound, url: str, verify: ssl.SSLContext | bool = True, max_redirects: int = 3
) -> Reason:
    async with outbound.client(timeout_s=5, verify=verify, max_redirects=max_redirects) as http:
        with pytest.raises(OutboundError) as caught:
            await http.request("GET", url, max_bytes=1024)
    return caught.value.reason


async def test_allow_listed_loopback_is_reached(site: Site) -> None:
    async with _outbound(["127.0.0.1/32"]).client(timeout_s=5) as http:
        response = await http.request("GET", f"http://127.0.0.1:{site.port}/", max_bytes=1024)
    assert (response.status_code, response.body, response.truncated) == (200, b"hello", False)
    assert len(site.requests) == 1


async def test_loopback_refused_without_the_allow_list(site: Site) -> None:
    for url in (
        f"http://127.0.0.1:{site.port}/",
        f"http://[::1]:{site.port}/",
        f"http://[::ffff:127.0.0.1]:{site.port}/",
    ):
        assert await _reason(_outbound(), url) is Reason.REFUSED, url
    assert site.requests == []


async def test_a_name_is_resolved_once_and_its_checked_address_connected(site: Site) -> None:
    # Answers change after the first lookup: a second resolution would go to 10.0.0.1.
    dns = FakeResolver({"gw.test": [["127.0.0.1"], ["10.0.0.1"]]})
    async with _outbound(["127.0.0.1/32"], dns).client(timeout_s=5) as http:
        response = await http.request("GET", f"http://gw.test:{site.port}/", max_bytes=1024)
    assert response.status_code == 200
    assert dns.calls == ["gw.test"]
    assert f"Host: gw.test:{site.port}" in site.requests[0].splitlines()


async def test_dns_answer_changing_between_check_and_connect(site: Site) -> None:
    # The URL checks out (a public address), then the name is rebound to loopback.
    dns = FakeResolver({"rebind.test": [["93.184.215.14"], ["127.0.0.1"]]})
    outbound = _outbound((), dns)
    url = f"http://rebind.test:{site.port}/"
    await outbound.check_url(url)
    assert await _reason(outbound, url) is Reason.REFUSED
    assert dns.calls == ["rebind.test", "rebind.test"]
    assert site.requests == []


async def test_a_name_with_one_private_answer_is_refused(site: Site) -> None:
    dns = FakeResolver({"mixed.test": [["93.184.215.14", "127.0.0.1"]]})
    assert await _reason(_outbound((), dns), f"http://mixed.test:{site.port}/") is Reason.REFUSED
    assert site.requests == []


async def test_redirects_are_checked_at_every_hop(site: Site) -> None:
    async with Site("127.0.0.2") as other:
        other.routes["/"] = ("HTTP/1.1 200 OK", b"private")
        dns = FakeResolver({"inside.test": [["127.0.0.2"]]})
        outbound = _outbound(["127.0.0.1/32"], dns)
        site.routes["/to-ip"] = (
            f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{other.port}/",
            b"",
        )
        site.routes["/to-name"] = (
            f"HTTP/1.1 301 Moved\r\nLocation: http://inside.test:{other.port}/",
            b"",
        )
        site.routes["/to-v6"] = ("HTTP/1.1 307 Temporary\r\nLocation: http://[::1]/", b"")
        for path in ("/to-ip", "/to-name", "/to-v6"):
            url = f"http://127.0.0.1:{site.port}{path}"
            assert await _reason(outbound, url) is Reason.REFUSED, path
        assert other.requests == []


async def test_redirects_followed_within_the_limit(site: Site) -> None:
    site.routes["/a"] = ("HTTP/1.1 302 Found\r\nLocation: /b", b"")
    site.routes["/b"] = ("HTTP/1.1 308 Permanent\r\nLocation: /", b"")
    site.routes["/loop"] = ("HTTP/1.1 302 Found\r\nLocation: /loop", b"")
    outbound = _outbound(["127.0.0.1/32"])
    async with outbound.client(timeout_s=5, max_redirects=2) as http:
        response = await http.request("GET", f"http://127.0.0.1:{site.port}/a", max_bytes=64)
        assert (response.body, response.url) == (b"hello", f"http://127.0.0.1:{site.port}/")
        with pytest.raises(OutboundError) as caught:
            await http.request("GET", f"http://127.0.0.1:{site.port}/loop", max_bytes=64)
        assert caught.value.reason is Reason.TOO_MANY_REDIRECTS
        # Only GET and HEAD follow; a POST gets the redirect itself.
        response = await http.request("POST", f"http://127.0.0.1:{site.port}/a", max_bytes=64)
        assert response.status_code == 302
    # Without max_redirects, a redirect is the answer.
    async with outbound.client(timeout_s=5) as http:
        response = await http.request("GET", f"http://127.0.0.1:{site.port}/a", max_bytes=64)
        assert response.status_code == 302


async def test_credentials_stay_with_their_origin(site: Site) -> None:
    async with Site("127.0.0.2") as other:
        other.routes["/"] = ("HTTP/1.1 200 OK", b"elsewhere")
        site.routes["/same"] = ("HTTP/1.1 302 Found\r\nLocation: /", b"")
        site.routes["/away"] = (
            f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{other.port}/",
            b"",
        )
        outbound = _outbound(["127.0.0.1/32", "127.0.0.2/32"])
        async with outbound.client(timeout_s=5, max_redirects=1) as http:
            for path in ("/same", "/away"):
                await http.request(
                    "GET",
                    f"http://127.0.0.1:{site.port}{path}",
                    max_bytes=64,
                    headers={"Authorization": "X-Matrix secret", "X-Other": "kept"},
                )
        assert "Authorization: X-Matrix secret" in site.requests[-1].splitlines()
        assert "Authorization" not in other.requests[0] and "X-Other: kept" in other.requests[0]


async def test_size_and_time_limits(site: Site) -> None:
    site.routes["/big"] = ("HTTP/1.1 200 OK", b"x" * 100_000)
    site.routes["/gzip"] = ("HTTP/1.1 200 OK\r\nContent-Encoding: gzip", b"\x1f\x8b")
    site.routes["/slow"] = ("HTTP/1.1 200 OK", b"late")
    site.hang.add("/slow")
    outbound = _outbound(["127.0.0.1/32"])
    base = f"http://127.0.0.1:{site.port}"
    assert await _reason(outbound, f"{base}/big") is Reason.TOO_LARGE
    assert await _reason(outbound, f"{base}/gzip") is Reason.BAD_RESPONSE
    async with outbound.client(timeout_s=5) as http:
        response = await http.request("GET", f"{base}/big", max_bytes=1000, truncate=True)
        assert (len(response.body), response.truncated) == (1000, True)
    async with outbound.client(timeout_s=0.3) as http:
        with pytest.raises(OutboundError) as caught:
            await http.request("GET", f"{base}/slow", max_bytes=1000)
        assert caught.value.reason is Reason.TIMEOUT
    assert "Accept-Encoding: identity" in site.requests[0].splitlines()


async def test_bad_urls_and_unknown_names() -> None:
    outbound = _outbound()
    for url in ("ftp://example.org/", "http://user:pw@example.org/", "http://:80/", "file:///x"):
        assert await _reason(outbound, url) is Reason.INVALID_URL, url
    assert await _reason(outbound, "http://nowhere.test/") is Reason.UNRESOLVABLE
    with pytest.raises(OutboundError) as caught:
        await outbound.check_url("https://nowhere.test/")
    assert caught.value.reason is Reason.UNRESOLVABLE


def _tls_pair(tmp_path: Path, hostname: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for ``hostname``, and a client
    context that trusts only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_tls_is_verified_for_the_hostname_not_the_address(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_pair(tmp_path, "gw.test")
    async with Site(context=server_tls) as site:
        site.routes["/"] = ("HTTP/1.1 200 OK", b"secure")
        dns = FakeResolver({"gw.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        outbound = _outbound(["127.0.0.1/32"], dns)
        async with outbound.client(timeout_s=5, verify=client_tls) as http:
            response = await http.request("GET", f"https://gw.test:{site.port}/", max_bytes=64)
            assert response.body == b"secure"
        # The same address under a name the certificate does not carry fails verification.
        for url in (f"https://other.test:{site.port}/", f"https://127.0.0.1:{site.port}/"):
            assert await _reason(outbound, url, verify=client_tls) is Reason.UNREACHABLE, url


async def test_configured_ca_bundle_is_trusted(tmp_path: Path) -> None:
    # outbound.tls_ca_bundle: requests with the default verification trust the configured
    # CAs (a push gateway or preview site with a private CA), and only those.
    server_tls, _ = _tls_pair(tmp_path, "gw.test")
    async with Site(context=server_tls) as site:
        site.routes["/"] = ("HTTP/1.1 200 OK", b"secure")
        dns = FakeResolver({"gw.test": [["127.0.0.1"]]})
        url = f"https://gw.test:{site.port}/"
        trusting = Outbound(
            AddressPolicy(("127.0.0.1/32",)), dns, ca_file=str(tmp_path / "cert.pem")
        )
        async with trusting.client(timeout_s=5) as http:
            response = await http.request("GET", url, max_bytes=64)
            assert response.body == b"secure"
        # Without the bundle, certifi's CAs do not know this certificate.
        plain = _outbound(["127.0.0.1/32"], dns)
        assert await _reason(plain, url) is Reason.UNREACHABLE
