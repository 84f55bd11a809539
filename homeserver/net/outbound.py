"""One way out for requests to URLs that someone else chose (SSRF).

URL previews, push gateways, WebPush endpoints and, next, other homeservers: the URL comes
from a user, a client or a remote server, so the request must not become a way into the
private network. Every connection is made by ``_CheckedBackend``: it resolves the host once,
refuses it unless every address it resolves to passes the ``AddressPolicy``, and connects to
one of exactly those addresses. The name itself is never resolved again (no DNS-rebinding
window): it is only sent as the ``Host`` header and used for TLS (SNI and the certificate
check). Redirects are followed by hand, when asked for, and every hop is a new request, so a
redirect to another host is checked like the first URL. Bodies are read up to a limit and
every request has one deadline.

Callers catch one exception, ``OutboundError``, and map its ``reason`` to their own errors.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
import orjson

from homeserver.net.addresses import AddressPolicy, IPAddress

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})


class Reason(StrEnum):
    INVALID_URL = "invalid_url"  # not an http(s) URL with a host, or it has credentials
    UNRESOLVABLE = "unresolvable"  # the host has no address
    REFUSED = "refused"  # the host is, or resolves to, an address the policy refuses
    UNREACHABLE = "unreachable"  # connection, TLS or HTTP failed
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"  # the body is over the caller's limit
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BAD_RESPONSE = "bad_response"  # a body we cannot bound (content-encoded)


class OutboundError(Exception):
    """A request to an outside URL failed; ``reason`` says how. The message is for logs."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0])) for info in infos]


def parse_url(url: str) -> tuple[str, str, int]:
    """The scheme, host and port of an http(s) URL without credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise OutboundError(Reason.INVALID_URL, "invalid URL") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundError(Reason.INVALID_URL, "not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise OutboundError(Reason.INVALID_URL, "URL with credentials")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


class Outbound:
    """The address policy and the resolver that every outbound request shares."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolver: Resolver = system_resolver,
        *,
        ca_file: str | None = None,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        # PEM file of the CAs that HTTPS requests trust (config outbound.tls_ca_bundle);
        # None: certifi's, as httpx does.
        self.ca_file = ca_file

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of ``host``, each of them allowed; OutboundError otherwise."""
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = list(await self._resolver(host, port))
            except (OSError, UnicodeError) as e:
                raise OutboundError(Reason.UNRESOLVABLE, f"{host} does not resolve") from e
        if not addresses:
            raise OutboundError(Reason.UNRESOLVABLE, f"{host} does not resolve")
        # All must pass: a name with one public and one private answer is refused, whichever
        # of them a connection would try first.
        for address in addresses:
            why = self.policy.refusal(address)
            if why is not None:
                raise OutboundError(Reason.REFUSED, f"{host} leads to a refused address ({why})")
        return list(dict.fromkeys(addresses))

    async def check_url(self, url: str, timeout_s: float = 10) -> None:
        """Whether ``url`` could be requested now (a request checks again, as DNS changes)."""
        _, host, port = parse_url(url)
        try:
            with anyio.fail_after(timeout_s):
                await self.resolve(host, port)
        except TimeoutError:
            raise OutboundError(Reason.TIMEOUT, f"resolving {host} timed out") from None

    def client(
        self,
        *,
        timeout_s: float,
        max_redirects: int = 0,
        user_agent: str | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> OutboundClient:
        return OutboundClient(
            self,
            timeout_s=timeout_s,
            max_redirects=max_redirects,
            user_agent=user_agent,
            verify=verify,
        )


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's TCP connections, made only to addresses that ``Outbound`` checked."""

    def __init__(self, outbound: Outbound) -> None:
        self._outbound = outbound
        self._tcp = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self._outbound.resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._tcp.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                failure = e
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundError(Reason.REFUSED, "no Unix sockets for outbound requests")

    async def sleep(self, seconds: float) -> None:
        await self._tcp.sleep(seconds)


@contextmanager
def _httpcore_errors() -> Iterator[None]:
    try:
        yield
    except httpcore.TimeoutException as e:
        raise OutboundError(Reason.TIMEOUT, f"timed out: {type(e).__name__}") from e
    except (
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
        httpcore.ProxyError,
    ) as e:
        raise OutboundError(Reason.UNREACHABLE, f"request failed: {type(e).__name__}") from e


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpcore_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class OutboundTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections all go through ``_CheckedBackend``. It never
    uses a proxy: a proxy would resolve the name itself."""

    def __init__(self, outbound: Outbound, *, verify: ssl.SSLContext | bool = True) -> None:
        if verify is True and outbound.ca_file is not None:
            verify = ssl.create_default_context(cafile=outbound.ca_file)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            network_backend=_CheckedBackend(outbound),
            max_connections=100,
            keepalive_expiry=5.0,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpcore_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    url: str  # the last hop's, after redirects
    status_code: int
    headers: httpx.Headers
    body: bytes
    truncated: bool  # the body went on past max_bytes (read with truncate=True)

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return orjson.loads(self.body)


class OutboundClient:
    """Requests through ``OutboundTransport``, each bounded in time and size."""

    def __init__(
        self,
        outbound: Outbound,
        *,
        timeout_s: float,
        max_redirects: int = 0,
        user_agent: str | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._outbound = outbound
        self._timeout_s = timeout_s
        self._max_redirects = max_redirects
        self._verify = verify
        # identity: a compressed body's size says nothing of what it inflates to.
        self._headers = {"Accept-Encoding": "identity"}
        if user_agent is not None:
            self._headers["User-Agent"] = user_agent
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                transport=OutboundTransport(self._outbound, verify=self._verify),
                trust_env=False,
                follow_redirects=False,
                timeout=self._timeout_s,
                headers=self._headers,
            )
        return self._http

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        max_bytes: int,
        truncate: bool = False,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        sni_hostname: str | None = None,
    ) -> OutboundResponse:
        """The response, its body read up to ``max_bytes`` (past it: cut when ``truncate``,
        else TOO_LARGE). Redirects of GET and HEAD are followed up to ``max_redirects``;
        any other redirect is returned as it is. ``sni_hostname``: the name TLS sends and
        checks the certificate for when it is not the URL's host (federation connects to an
        SRV target but expects the server name's certificate); redirects drop it."""
        try:
            with anyio.fail_after(self._timeout_s):
                return await self._request(
                    method, url, max_bytes, truncate, headers, content, json, sni_hostname
                )
        except TimeoutError:
            raise OutboundError(Reason.TIMEOUT, "timed out") from None

    async def _request(
        self,
        method: str,
        url: str,
        max_bytes: int,
        truncate: bool,
        headers: dict[str, str] | None,
        content: bytes | None,
        json: Any,
        sni_hostname: str | None = None,
    ) -> OutboundResponse:
        follow = method in ("GET", "HEAD") and self._max_redirects > 0
        for _ in range(self._max_redirects + 1):
            parse_url(url)
            extensions = {} if sni_hostname is None else {"sni_hostname": sni_hostname}
            try:
                request = self._client().build_request(
                    method, url, headers=headers, content=content, json=json, extensions=extensions
                )
                response = await self._client().send(request, stream=True)
            except (httpx.HTTPError, httpx.InvalidURL) as e:
                raise OutboundError(Reason.UNREACHABLE, f"request failed: {e}") from e
            try:
                location = response.headers.get("location")
                if follow and response.status_code in _REDIRECTS and location:
                    target = response.url.join(location)
                    if headers and (target.scheme, target.host, target.port) != (
                        response.url.scheme,
                        response.url.host,
                        response.url.port,
                    ):
                        # Credentials were meant for the first origin only.
                        headers = {
                            k: v for k, v in headers.items() if k.lower() not in _CREDENTIALS
                        }
                    url = str(target)
                    sni_hostname = None
                    continue
                body, truncated = await _read(response, max_bytes, truncate)
                return OutboundResponse(
                    url=url,
                    status_code=response.status_code,
                    headers=response.headers,
                    body=body,
                    truncated=truncated,
                )
            finally:
                await response.aclose()
        raise OutboundError(Reason.TOO_MANY_REDIRECTS, f"more than {self._max_redirects}")


async def _read(response: httpx.Response, max_bytes: int, truncate: bool) -> tuple[bytes, bool]:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise OutboundError(Reason.BAD_RESPONSE, f"content-encoding {encoding} refused")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            if size + len(chunk) > max_bytes:
                if not truncate:
                    raise OutboundError(Reason.TOO_LARGE, f"body over {max_bytes} bytes")
                chunks.append(chunk[: max_bytes - size])
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
    except httpx.HTTPError as e:
        raise OutboundError(Reason.UNREACHABLE, f"reading the body failed: {e}") from e
    return b"".join(chunks), False
