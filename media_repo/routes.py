"""The media endpoints: ``/_matrix/media/*`` and the authenticated ``/_matrix/client/v1/media/*``.

Uploads stream the request body to the service; downloads stream stored bytes back with the
headers that make media safe to serve from our origin (``Content-Security-Policy: sandbox``,
``nosniff``, ``attachment`` unless the type is safe inline) and cheap to cache (a strong
``ETag`` that is the content's sha256, ``Cache-Control: immutable``, ``Range``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from homeserver.core.config import MediaConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.web.edge import json_response, query_bool, query_int, require_user, services_of
from media_repo.cdn import download_path, thumbnail_path
from media_repo.mxc import MxcUri
from media_repo.preview import UrlPreviewer
from media_repo.service import Blob, MediaService, check_content_type, check_filename
from media_repo.thumbnailer import Method


@dataclass(frozen=True, slots=True)
class MediaServices:
    """What the routes of the media repository call (built by the composition root)."""

    media: MediaService
    url_previews: UrlPreviewer
    config: MediaConfig


# spec, "Serving inline content": only these types may be served inline; anything else is an
# attachment, so a browser never renders an uploaded page or script from our origin.
INLINE_CONTENT_TYPES = frozenset(
    {
        "text/css",
        "text/plain",
        "text/csv",
        "application/json",
        "application/ld+json",
        "image/jpeg",
        "image/gif",
        "image/png",
        "image/apng",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "video/quicktime",
        "audio/mp4",
        "audio/webm",
        "audio/aac",
        "audio/mpeg",
        "audio/ogg",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/flac",
        "audio/x-flac",
    }
)
# Media is immutable: a year, and browsers need not revalidate.
CACHE_FOREVER = "max-age=31536000, immutable"
# Nothing an uploaded file contains may run or load anything, even if opened directly.
MEDIA_CSP = (
    "sandbox; default-src 'none'; script-src 'none'; object-src 'none'; "
    "img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'"
)
DEFAULT_TIMEOUT_MS = 20_000
MAX_THUMBNAIL_REQUEST = 65_535
_CDN_THUMBNAIL = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})-(crop|scale)(-animated)?\Z")


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


async def _body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client gone half-way is no server error."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise MatrixError(
            Codes.UNKNOWN, "The client went away during the upload", status=400
        ) from None


def _mxc(request: Request) -> MxcUri:
    return MxcUri.of(request.path_params["server_name"], request.path_params["media_id"])


# --- uploads -------------------------------------------------------------------------------


async def post_upload(request: Request) -> Response:
    """POST /_matrix/media/v3/upload"""
    hs = services_of(request, MediaServices)
    requester = await require_user(request)
    content_type = check_content_type(request.headers.get("content-type"))
    filename = check_filename(request.query_params.get("filename"))
    mxc = await hs.media.upload(
        requester, _body(request), _declared_length(request), content_type, filename
    )
    return json_response({"content_uri": str(mxc)})


async def post_create(request: Request) -> Response:
    """POST /_matrix/media/v1/create"""
    hs = services_of(request, MediaServices)
    requester = await require_user(request)
    mxc, expires = await hs.media.create(requester)
    return json_response({"content_uri": str(mxc), "unused_expires_at": expires})


async def put_upload(request: Request) -> Response:
    """PUT /_matrix/media/v3/upload/{serverName}/{mediaId}"""
    hs = services_of(request, MediaServices)
    requester = await require_user(request)
    mxc = _mxc(request)
    content_type = check_content_type(request.headers.get("content-type"))
    filename = check_filename(request.query_params.get("filename"))
    await hs.media.upload_pending(
        requester, mxc, _body(request), _declared_length(request), content_type, filename
    )
    return json_response({})


async def get_config(request: Request) -> Response:
    """GET /_matrix/client/v1/media/config"""
    hs = services_of(request, MediaServices)
    await require_user(request)
    return json_response(hs.media.public_config())


async def get_preview_url(request: Request) -> Response:
    """GET /_matrix/client/v1/media/preview_url"""
    hs = services_of(request, MediaServices)
    requester = await require_user(request)
    if not hs.config.url_preview.enabled:
        # Understood but refused: not M_UNRECOGNIZED, which says the endpoint is unknown.
        raise MatrixError(Codes.FORBIDDEN, "URL previews are disabled on this server")
    url = request.query_params.get("url")
    if not url:
        raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: url")
    query_int(request, "ts", minimum=0)  # any version will do: the newest is served
    return json_response(await hs.url_previews.preview(requester, url))


# --- downloads -----------------------------------------------------------------------------


async def get_download(request: Request) -> Response:
    """GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]"""
    await require_user(request)
    return await _download(request, legacy=False)


async def get_download_legacy(request: Request) -> Response:
    """GET /_matrix/media/v3/download/{serverName}/{mediaId}[/{fileName}]"""
    return await _download(request, legacy=True)


async def _download(request: Request, *, legacy: bool) -> Response:
    hs = services_of(request, MediaServices)
    mxc = _mxc(request)
    # An empty name (nio asks for ".../{mediaId}/") is no override.
    filename = check_filename(request.path_params.get("file_name") or None)
    timeout_ms = query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, minimum=0)
    allow_remote = query_bool(request, "allow_remote", True)
    redirect_ok = not legacy or query_bool(request, "allow_redirect", False)
    media = await hs.media.get_media(
        mxc, timeout_ms=timeout_ms or 0, allow_remote=allow_remote, legacy=legacy
    )
    if redirect_ok and filename is None:
        location = hs.media.cdn_download_url(mxc)
        if location is not None:
            return _redirect(location)
    blob = hs.media.download_blob(media, filename)
    return _media_response(request, blob, public=legacy)


async def get_thumbnail(request: Request) -> Response:
    """GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}"""
    await require_user(request)
    return await _thumbnail(request, legacy=False)


async def get_thumbnail_legacy(request: Request) -> Response:
    """GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}"""
    return await _thumbnail(request, legacy=True)


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


async def _thumbnail(request: Request, *, legacy: bool) -> Response:
    hs = services_of(request, MediaServices)
    mxc = _mxc(request)
    width, height = _dimension(request, "width"), _dimension(request, "height")
    method = _method(request)
    animated = query_bool(request, "animated", False)
    timeout_ms = query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, minimum=0)
    allow_remote = query_bool(request, "allow_remote", True)
    redirect_ok = not legacy or query_bool(request, "allow_redirect", False)
    media = await hs.media.get_media(
        mxc, timeout_ms=timeout_ms or 0, allow_remote=allow_remote, legacy=legacy
    )
    if redirect_ok and hs.media.cdn is not None and hs.config.thumbnails.enabled:
        spec = hs.media.thumbnail_spec(media, width, height, method, animated)
        location = hs.media.cdn_thumbnail_url(mxc, spec) if spec is not None else None
        if location is not None:
            return _redirect(location)
    blob = await hs.media.thumbnail(media, width, height, method, animated)
    return _media_response(request, blob, public=legacy, disposition="inline")


# --- the CDN's origin ----------------------------------------------------------------------


async def get_cdn_download(request: Request) -> Response:
    """GET /_matrix/media/cdn/download/{serverName}/{mediaId}?md5=&expires= (the edge asks)"""
    hs = services_of(request, MediaServices)
    mxc = _mxc(request)
    hs.media.check_cdn_signature(
        download_path(mxc.server_name, mxc.media_id),
        request.query_params.get("md5"),
        request.query_params.get("expires"),
    )
    media = await hs.media.get_media(mxc, timeout_ms=0, allow_remote=False)
    return _media_response(request, hs.media.download_blob(media, None), public=True)


async def get_cdn_thumbnail(request: Request) -> Response:
    """GET /_matrix/media/cdn/thumbnail/{serverName}/{mediaId}/{W}x{H}-{method}[-animated]"""
    hs = services_of(request, MediaServices)
    mxc = _mxc(request)
    match = _CDN_THUMBNAIL.match(request.path_params["spec"])
    if match is None:
        raise MatrixError(Codes.INVALID_PARAM, "Invalid thumbnail")
    width, height = int(match[1]), int(match[2])
    method: Method = "crop" if match[3] == "crop" else "scale"
    animated = match[4] is not None
    hs.media.check_cdn_signature(
        thumbnail_path(mxc.server_name, mxc.media_id, width, height, method, animated),
        request.query_params.get("md5"),
        request.query_params.get("expires"),
    )
    if width < 1 or height < 1:
        raise MatrixError(Codes.INVALID_PARAM, "Invalid thumbnail")
    media = await hs.media.get_media(mxc, timeout_ms=0, allow_remote=False)
    blob = await hs.media.thumbnail(media, width, height, method, animated)
    return _media_response(request, blob, public=True, disposition="inline")


# --- responses -----------------------------------------------------------------------------


def _redirect(location: str) -> Response:
    # The signed URL lives minutes: the redirect itself is not cached.
    return RedirectResponse(location, status_code=307, headers={"Cache-Control": "no-store"})


def content_disposition(kind: str, filename: str | None) -> str:
    if not filename:
        return kind
    if filename.isascii() and filename.isprintable() and not any(c in filename for c in '"\\'):
        return f'{kind}; filename="{filename}"'
    # RFC 6266 / 8187: anything else is percent-encoded UTF-8.
    return f"{kind}; filename*=utf-8''{quote(filename, safe='')}"


def _is_inline_safe(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in INLINE_CONTENT_TYPES


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


RangeResult = tuple[int, int] | Literal["unsatisfiable"] | None


def parse_range(header: str | None, size: int) -> RangeResult:
    """One ``bytes=`` range as (start, end inclusive); None to send everything (RFC 9110:
    a Range that cannot be parsed, or asks for several ranges, is ignored)."""
    if header is None or not header.startswith("bytes="):
        return None
    spec = header[len("bytes=") :].strip()
    first, sep, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if not sep or "," in spec:
        return None
    if not first:
        if not last.isdigit():
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


def _media_response(
    request: Request, blob: Blob, *, public: bool, disposition: str | None = None
) -> Response:
    hs = services_of(request, MediaServices)
    etag = f'"{blob.etag}"'
    kind = disposition or ("inline" if _is_inline_safe(blob.content_type) else "attachment")
    headers = {
        "ETag": etag,
        "Cache-Control": ("public, " if public else "private, ") + CACHE_FOREVER,
        "Content-Security-Policy": MEDIA_CSP,
        "X-Content-Type-Options": "nosniff",
        # Web clients on other origins may embed media (they fetch it with a token).
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Accept-Ranges": "bytes",
    }
    inm = request.headers.get("if-none-match")
    if inm is not None and _etag_matches(inm, etag):
        return Response(status_code=304, headers=headers)
    headers["Content-Type"] = blob.content_type
    filename = blob.filename
    if filename is None and disposition == "inline":
        filename = "thumbnail" + _extension(blob.content_type)  # spec: thumbnails get a name
    headers["Content-Disposition"] = content_disposition(kind, filename)
    byte_range = parse_range(request.headers.get("range"), blob.size)
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        byte_range = None  # the client's copy is another version: send it all
    if byte_range == "unsatisfiable":
        return json_response(
            {"errcode": Codes.INVALID_PARAM, "error": "Range not satisfiable"},
            status_code=416,
            headers={"Content-Range": f"bytes */{blob.size}"},
        )
    status, start, end = 200, 0, blob.size - 1
    if byte_range is not None:
        status, (start, end) = 206, byte_range
        headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
    headers["Content-Length"] = str(end - start + 1)
    if blob.size == 0 or request.method == "HEAD":
        return Response(b"", status_code=status, headers=headers)  # no storage read for HEAD
    return StreamingResponse(hs.media.read(blob, start, end), status_code=status, headers=headers)


def _extension(content_type: str) -> str:
    return {
        "image/jpeg": ".jpg",
        "image/png": ".png",
        "image/webp": ".webp",
        "image/gif": ".gif",
    }.get(content_type, "")


_DOWNLOAD = "/download/{server_name}/{media_id}"
_THUMBNAIL = "/thumbnail/{server_name}/{media_id}"

# Mounted at /_matrix/client/v1/media: authenticated media (spec v1.11).
client_media_routes: list[BaseRoute] = [
    Route(_DOWNLOAD, get_download, methods=["GET"]),
    # The file name is the last segment and may hold an encoded "/"; empty is no override.
    Route(_DOWNLOAD + "/{file_name:path}", get_download, methods=["GET"]),
    Route(_THUMBNAIL, get_thumbnail, methods=["GET"]),
    Route("/config", get_config, methods=["GET"]),
    Route("/preview_url", get_preview_url, methods=["GET"]),
]

# Mounted at /_matrix/media: uploads, the legacy unauthenticated downloads, the CDN's origin.
media_routes: list[BaseRoute] = [
    Route("/v3/upload", post_upload, methods=["POST"]),
    Route("/v1/create", post_create, methods=["POST"]),
    Route("/v3/upload/{server_name}/{media_id}", put_upload, methods=["PUT"]),
    Route("/v3/download/{server_name}/{media_id}", get_download_legacy, methods=["GET"]),
    Route(
        "/v3/download/{server_name}/{media_id}/{file_name:path}",
        get_download_legacy,
        methods=["GET"],
    ),
    Route("/v3/thumbnail/{server_name}/{media_id}", get_thumbnail_legacy, methods=["GET"]),
    # Deprecated spellings of the authenticated endpoints; they need a token too.
    Route("/v3/config", get_config, methods=["GET"]),
    Route("/v3/preview_url", get_preview_url, methods=["GET"]),
    Route("/cdn/download/{server_name}/{media_id}", get_cdn_download, methods=["GET"]),
    Route("/cdn/thumbnail/{server_name}/{media_id}/{spec}", get_cdn_thumbnail, methods=["GET"]),
]
