"""Requests to other homeservers: discovered (``discovery``), signed with X-Matrix and sent
through the outbound transport, so that every connection is to an address the policy
allows and every certificate is checked (against ``federation.tls_ca_bundle`` if set)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any
from urllib.parse import urlencode

import cachetools
import orjson

from homeserver.core.errors import MatrixError
from homeserver.core.json_limits import loads_limited
from homeserver.core.types import JsonDict
from homeserver.federation.discovery import ServerAddress, ServerResolver, is_ip_literal
from homeserver.federation.local_keys import LocalKeys
from homeserver.federation.policy import ServerPolicy
from homeserver.net.outbound import (
    Outbound,
    OutboundClient,
    OutboundError,
    OutboundResponse,
    Reason,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# One connection pool per (address, port, certificate name): a connection whose
# certificate was checked for one server name is never reused for another.
_CLIENTS = 256


class FederationError(Exception):
    """A request to another server failed. ``status`` is None when no HTTP answer came;
    ``errcode`` is the remote error's, for callers that act on it (never shown to a client
    as if it were ours)."""

    def __init__(
        self,
        destination: str,
        message: str,
        *,
        status: int | None = None,
        errcode: str | None = None,
        reason: Reason | None = None,
    ) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination
        self.status = status
        self.errcode = errcode
        self.reason = reason


def x_matrix_header(origin: str, destination: str, key_id: str, signature: str) -> str:
    # spec, "Request Authentication": one space after X-Matrix, lower-case names, no
    # spaces around commas; server names, key IDs and base64 need no escaping.
    return (
        f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",sig="{signature}"'
    )


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class FederationClient:
    def __init__(
        self,
        keys: LocalKeys,
        resolver: ServerResolver,
        outbound: Outbound,
        policy: ServerPolicy,
        *,
        tls: ssl.SSLContext,
        timeout_s: float,
        user_agent: str = "homeserver",
    ) -> None:
        self._keys = keys
        self._resolver = resolver
        self._outbound = outbound
        self._policy = policy
        self._tls = tls
        self._timeout_s = timeout_s
        self._user_agent = user_agent
        self._clients: cachetools.LRUCache[tuple[str, int, str], OutboundClient] = (
            cachetools.LRUCache(_CLIENTS)
        )
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def server_name(self) -> str:
        return self._keys.server_name

    def authorization(self, destination: str, method: str, uri: str, content: Any | None) -> str:
        """The X-Matrix header value for one request."""
        signed: JsonDict = {
            "method": method,
            "uri": uri,
            "origin": self.server_name,
            "destination": destination,
        }
        if content is not None:
            signed["content"] = content
        self._keys.sign(signed)
        signature = signed["signatures"][self.server_name][self._keys.key_id]
        return x_matrix_header(self.server_name, destination, self._keys.key_id, signature)

    async def get_json(
        self,
        destination: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        int_range: bool = True,
    ) -> Any:
        return await self.request(
            destination, "GET", path, query=query, max_bytes=max_bytes, int_range=int_range
        )

    async def request(
        self,
        destination: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        content: Any | None = None,
        max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        int_range: bool = True,
    ) -> Any:
        """Send a signed request; the decoded JSON body of a 2xx answer.

        ``path`` is already percent-encoded (``urllib.parse.quote`` each segment); it and
        the query are signed exactly as they are sent. ``int_range`` False: integers out of
        the canonical range are left to the caller (an answer of PDUs, each checked by its
        room's version: rooms of versions 1 to 5 may hold them)."""
        response = await self.request_raw(
            destination, method, path, query=query, content=content, max_bytes=max_bytes
        )
        return self._decode(destination, response.status_code, response.body, int_range)

    async def request_raw(
        self,
        destination: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        content: Any | None = None,
        max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> OutboundResponse:
        """Send a signed request; the answer whatever its status (media is not JSON).
        FederationError only when no answer came (or it was too large)."""
        if not self._policy.allows(destination):
            raise FederationError(destination, "federation with this server is not allowed")
        if method in ("POST", "PUT") and content is None:
            content = {}  # spec: POST and PUT always carry a JSON object
        uri = path + ("?" + urlencode(query, doseq=True) if query else "")
        try:
            addresses = await self._resolver.resolve(destination)
        except ValueError as e:
            raise FederationError(destination, str(e)) from e
        except OutboundError as e:
            raise FederationError(destination, str(e), reason=e.reason) from e
        headers = {
            "Authorization": self.authorization(destination, method, uri, content),
            "User-Agent": self._user_agent,
        }
        body = None
        if content is not None:
            body = orjson.dumps(content)
            headers["Content-Type"] = "application/json"
        failure: OutboundError | None = None
        for address in addresses:
            try:
                response = await self._client_for(address).request(
                    method,
                    f"https://{address.url_host}:{address.port}{uri}",
                    max_bytes=max_bytes,
                    headers={**headers, "Host": address.host_header},
                    content=body,
                    sni_hostname=None if is_ip_literal(address.tls_name) else address.tls_name,
                )
            except OutboundError as e:
                # The next address (SRV records) may answer; a refused or too large answer
                # would be the same from any of them.
                failure = e
                if e.reason in (Reason.UNREACHABLE, Reason.TIMEOUT, Reason.UNRESOLVABLE):
                    continue
                break
            return response
        assert failure is not None
        raise FederationError(destination, str(failure), reason=failure.reason) from failure

    @staticmethod
    def _decode(destination: str, status: int, body: bytes, int_range: bool = True) -> Any:
        # A remote answer enters like a client's body: JSON within the limits of
        # homeserver.core.json_limits, or no answer at all.
        try:
            data = loads_limited(body, int_range=int_range) if body else None
        except MatrixError:
            data = None
        if 200 <= status < 300:
            if data is None:
                raise FederationError(
                    destination, "answer is not JSON within the limits", status=status
                )
            return data
        errcode = data.get("errcode") if isinstance(data, dict) else None
        raise FederationError(
            destination,
            f"answered {status}",
            status=status,
            errcode=errcode if isinstance(errcode, str) else None,
        )

    def _client_for(self, address: ServerAddress) -> OutboundClient:
        key = (address.host, address.port, address.tls_name)
        client = self._clients.get(key)
        if client is None:
            if len(self._clients) >= _CLIENTS:
                _, evicted = self._clients.popitem()
                task = asyncio.create_task(evicted.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            client = self._outbound.client(timeout_s=self._timeout_s, verify=self._tls)
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()
        if self._closing:
            await asyncio.wait(self._closing)
