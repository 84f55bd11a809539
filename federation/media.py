"""Our media for other servers (spec v1.11 authenticated media): the content, or a
thumbnail, as ``multipart/mixed``: a JSON metadata part (an empty object today), then the
bytes with their type and disposition. Only our own media is served; remote media is not
relayed."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from federation.edge import authenticated_origin
from homeserver.core.errors import Codes, MatrixError
from homeserver.web.edge import query_bool, query_int, services_of
from media_repo.mxc import MxcUri
from media_repo.routes import (
    DEFAULT_TIMEOUT_MS,
    INLINE_CONTENT_TYPES,
    MAX_THUMBNAIL_REQUEST,
    content_disposition,
)
from media_repo.service import Blob, MediaService
from media_repo.thumbnailer import Method


@dataclass(frozen=True, slots=True)
class FederationMediaServices:
    """What the federation media routes call (built by the composition root)."""

    media: MediaService
    server_name: str


def _mxc(hs: FederationMediaServices, request: Request) -> MxcUri:
    return MxcUri.of(hs.server_name, request.path_params["media_id"])


def _multipart(media: MediaService, blob: Blob, default_name: str | None) -> Response:
    boundary = secrets.token_hex(16)
    inline = blob.content_type.split(";", 1)[0].strip().lower() in INLINE_CONTENT_TYPES
    disposition = content_disposition(
        "inline" if inline else "attachment", blob.filename or default_name
    )
    head = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
        f"--{boundary}\r\nContent-Type: {blob.content_type}\r\n"
        f"Content-Disposition: {disposition}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        if blob.size:
            async for chunk in media.read(blob, 0, blob.size - 1):
                yield chunk
        yield tail

    return StreamingResponse(
        body(),
        media_type=f"multipart/mixed; boundary={boundary}",
        headers={
            "Content-Length": str(len(head) + blob.size + len(tail)),
            "X-Content-Type-Options": "nosniff",
        },
    )


async def get_media_download(request: Request) -> Response:
    """GET /_matrix/federation/v1/media/download/{mediaId}"""
    hs = services_of(request, FederationMediaServices)
    await authenticated_origin(request)
    timeout_ms = query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, minimum=0) or 0
    media = await hs.media.get_media(_mxc(hs, request), timeout_ms=timeout_ms, allow_remote=False)
    return _multipart(hs.media, hs.media.download_blob(media, None), None)


def _dimension(request: Request, name: str) -> int:
    if name not in request.query_params:
        raise MatrixError(Codes.MISSING_PARAM, f"Missing parameter: {name}")
    value = query_int(request, name, minimum=1, maximum=MAX_THUMBNAIL_REQUEST)
    assert value is not None
    return value


def _method(request: Request) -> Method:
    method = request.query_params.get("method", "scale")
    if method == "crop":
        return "crop"
    if method == "scale":
        return "scale"
    raise MatrixError(Codes.INVALID_PARAM, "method must be crop or scale")


async def get_media_thumbnail(request: Request) -> Response:
    """GET /_matrix/federation/v1/media/thumbnail/{mediaId}"""
    hs = services_of(request, FederationMediaServices)
    await authenticated_origin(request)
    mxc = _mxc(hs, request)
    width, height = _dimension(request, "width"), _dimension(request, "height")
    method = _method(request)
    animated = query_bool(request, "animated", False)
    timeout_ms = query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, minimum=0) or 0
    media = await hs.media.get_media(mxc, timeout_ms=timeout_ms, allow_remote=False)
    blob = await hs.media.thumbnail(media, width, height, method, animated)
    return _multipart(hs.media, blob, "thumbnail")


routes = [
    Route("/v1/media/download/{media_id}", get_media_download, methods=["GET"]),
    Route("/v1/media/thumbnail/{media_id}", get_media_thumbnail, methods=["GET"]),
]
