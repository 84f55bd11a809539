"""Fetching another server's media for our clients.

The authenticated endpoint first (``GET /_matrix/federation/v1/media/download/{mediaId}``,
multipart/mixed: a JSON part, then the content or a ``Location`` to fetch it from); the
legacy ``/_matrix/media/v3/download`` only when the remote does not know that endpoint.
Redirects are followed through the outbound transport, each hop checked like any URL
someone else chose, and without our signature (it was for the remote only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from homeserver.core.errors import Codes, MatrixError
from homeserver.federation.client import FederationError
from homeserver.net.outbound import OutboundClient, OutboundError, OutboundResponse, Reason

logger = logging.getLogger(__name__)

# The multipart envelope (boundaries, part headers, the JSON part) beyond the content itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class RemoteFile:
    content_type: str | None
    filename: str | None
    body: bytes


class SignedRequests(Protocol):
    """What of ``FederationClient`` this needs."""

    async def request_raw(
        self,
        destination: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        content: Any | None = None,
        max_bytes: int = ...,
    ) -> OutboundResponse: ...


def _bad_gateway(message: str) -> MatrixError:
    return MatrixError(Codes.UNKNOWN, message, status=502)


def _too_large(limit: int) -> MatrixError:
    # Synapse answers 502 M_TOO_LARGE: the client did nothing wrong, the remote's file is.
    return MatrixError(Codes.TOO_LARGE, f"Remote file is larger than {limit} bytes", status=502)


def _errcode(response: OutboundResponse) -> str | None:
    try:
        data = orjson.loads(response.body) if response.body else None
    except orjson.JSONDecodeError:
        return None
    code = data.get("errcode") if isinstance(data, dict) else None
    return code if isinstance(code, str) else None


def _unknown_endpoint(response: OutboundResponse) -> bool:
    """The remote does not serve the authenticated media endpoint (as Synapse judges it)."""
    errcode = _errcode(response)
    if response.status_code in (404, 405):
        return errcode in (None, Codes.UNRECOGNIZED)
    return response.status_code == 400 and errcode == Codes.UNRECOGNIZED


def _failure(response: OutboundResponse, limit: int) -> MatrixError:
    """A remote's error answer, as we tell our client."""
    errcode = _errcode(response)
    if response.status_code == 404 or errcode == Codes.NOT_FOUND:
        return MatrixError(Codes.NOT_FOUND, "Remote media not found")
    if errcode == Codes.NOT_YET_UPLOADED:
        return MatrixError(Codes.NOT_YET_UPLOADED, "Content has not yet been uploaded")
    if errcode == Codes.TOO_LARGE or response.status_code == 413:
        return _too_large(limit)
    return _bad_gateway(f"The remote server answered {response.status_code}")


def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    message = Message(policy=HTTP)
    try:
        message["Content-Disposition"] = disposition
        name = message.get_filename()
    except (ValueError, TypeError, LookupError):
        return None
    return name or None


def _content_type(raw: str | None) -> str | None:
    return raw.strip() if raw and raw.strip() else None


class FederationMediaFetcher:
    """``RemoteMediaSource`` of the media service, over federation."""

    def __init__(self, client: SignedRequests, redirects: OutboundClient) -> None:
        self._client = client
        self._redirects = redirects

    async def fetch(
        self, server_name: str, media_id: str, *, max_bytes: int, timeout_ms: int
    ) -> RemoteFile:
        path = f"/_matrix/federation/v1/media/download/{quote(media_id, safe='')}"
        response = await self._send(
            server_name,
            path,
            {"timeout_ms": str(timeout_ms)},
            max_bytes + MULTIPART_OVERHEAD_BYTES,
            max_bytes,
        )
        if response.status_code == 200:
            return await self._multipart(server_name, response, max_bytes)
        if not _unknown_endpoint(response):
            raise _failure(response, max_bytes)
        logger.info("remote has no federation media endpoint", extra={"server": server_name})
        legacy = (
            f"/_matrix/media/v3/download/{quote(server_name, safe='')}/{quote(media_id, safe='')}"
        )
        query = {"allow_remote": "false", "allow_redirect": "true", "timeout_ms": str(timeout_ms)}
        response = await self._send(server_name, legacy, query, max_bytes, max_bytes)
        if response.status_code in _REDIRECTS and response.headers.get("location"):
            return await self._follow(response.headers["location"], max_bytes)
        if response.status_code != 200:
            raise _failure(response, max_bytes)
        return RemoteFile(
            content_type=_content_type(response.headers.get("content-type")),
            filename=_filename(response.headers.get("content-disposition")),
            body=response.body,
        )

    async def _send(
        self, server_name: str, path: str, query: dict[str, Any], max_bytes: int, limit: int
    ) -> OutboundResponse:
        try:
            return await self._client.request_raw(
                server_name, "GET", path, query=query, max_bytes=max_bytes
            )
        except FederationError as e:
            if e.reason == Reason.TOO_LARGE:
                raise _too_large(limit) from e
            logger.info("remote media unreachable", extra={"server": server_name, "error": str(e)})
            raise _bad_gateway("Failed to fetch remote media") from e

    async def _multipart(
        self, server_name: str, response: OutboundResponse, max_bytes: int
    ) -> RemoteFile:
        content_type = response.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/mixed"):
            raise _bad_gateway("The remote server's answer is not multipart/mixed")
        head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
        message = BytesParser(policy=HTTP).parsebytes(head + response.body)
        if not message.is_multipart():
            raise _bad_gateway("The remote server's multipart answer could not be read")
        parts = list(message.iter_parts())
        if len(parts) != 2:
            raise _bad_gateway("The remote server's multipart answer has not two parts")
        meta, content = parts
        raw = meta.get_payload(decode=True)
        try:
            metadata = orjson.loads(raw) if isinstance(raw, bytes) else None
        except orjson.JSONDecodeError:
            metadata = None
        if not isinstance(metadata, dict):
            raise _bad_gateway("The remote server's media metadata is not a JSON object")
        location = content.get("Location")
        if location:
            return await self._follow(str(location), max_bytes)
        body = content.get_payload(decode=True)
        if not isinstance(body, bytes):
            raise _bad_gateway("The remote server's media part could not be read")
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
        logger.info("remote media fetched", extra={"server": server_name, "size": len(body)})
        return RemoteFile(
            content_type=_content_type(content.get("Content-Type")),
            filename=_filename(content.get("Content-Disposition")),
            body=body,
        )

    async def _follow(self, location: str, max_bytes: int) -> RemoteFile:
        try:
            response = await self._redirects.request("GET", location, max_bytes=max_bytes)
        except OutboundError as e:
            if e.reason == Reason.TOO_LARGE:
                raise _too_large(max_bytes) from e
            logger.info("remote media redirect failed", extra={"error": str(e)})
            raise _bad_gateway("Failed to fetch remote media from its redirect") from e
        if response.status_code != 200:
            raise _failure(response, max_bytes)
        return RemoteFile(
            content_type=_content_type(response.headers.get("content-type")),
            filename=_filename(response.headers.get("content-disposition")),
            body=response.body,
        )
