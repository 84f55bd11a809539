"""URL previews (``/preview_url``): OpenGraph data of a page, fetched without SSRF.

The server fetches what users post, so pages and their images are fetched through the outbound
transport (``homeserver.net.outbound``): the host is resolved once, every address must be
public unless ``outbound.allow_addresses`` allows it, the connection goes to that checked
address, and each redirect is checked the same way. Bodies are read up to ``max_bytes``; the
whole preview (DNS, redirects, page, image) has one deadline.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
from cachetools import TTLCache

from homeserver.core.config import UrlPreviewConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import Requester
from homeserver.net.outbound import Outbound, OutboundError, Reason
from media_repo.service import MediaService, check_content_type

logger = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
# A page's preview is kept this long per worker: posting a link in a busy room fetches once.
CACHE_TTL_S = 3600
CACHE_SIZE = 1024
# Only the head of a page matters; parsing stops at its end or past this.
MAX_HTML_PARSE_CHARS = 1024 * 1024
MAX_VALUE_CHARS = 1000
MAX_PROPERTIES = 50
ACCEPT = "text/html, application/xhtml+xml, image/*;q=0.9, */*;q=0.1"


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str  # after redirects
    content_type: str
    body: bytes


class UrlPreviewer:
    def __init__(self, config: UrlPreviewConfig, media: MediaService, outbound: Outbound) -> None:
        self._config = config
        self._media = media
        self._outbound = outbound
        self._cache: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=CACHE_SIZE, ttl=CACHE_TTL_S)

    async def preview(self, requester: Requester, url: str) -> dict[str, Any]:
        _check_url(url)
        cached = self._cache.get(url)
        if cached is not None:
            return cached
        try:
            with anyio.fail_after(self._config.timeout_ms / 1000):
                result = await self._preview(requester, url)
        except TimeoutError:
            raise MatrixError(Codes.UNKNOWN, "Timed out fetching the URL", status=504) from None
        self._cache[url] = result
        return result

    async def _preview(self, requester: Requester, url: str) -> dict[str, Any]:
        page = await self.fetch(url)
        media_type = page.content_type.split(";", 1)[0].strip().lower()
        if media_type.startswith("image/"):
            return await self._store_image(requester, page)
        if media_type not in ("text/html", "application/xhtml+xml"):
            return {}
        og = parse_opengraph(page.body, page.content_type)
        image_url = og.get("og:image")
        # The page's own image fields describe its URL; ours describe the stored copy.
        og = {k: v for k, v in og.items() if not k.startswith("og:image")}
        if isinstance(image_url, str) and image_url:
            try:
                image = await self.fetch(urljoin(page.url, image_url))
                if image.content_type.lower().startswith("image/"):
                    og.update(await self._store_image(requester, image))
            except MatrixError as e:
                logger.info("preview image not fetched", extra={"errcode": str(e.code)})
        return og

    async def _store_image(self, requester: Requester, fetched: Fetched) -> dict[str, Any]:
        try:
            content_type = check_content_type(fetched.content_type)
            mxc = await self._media.upload(
                requester, _one(fetched.body), len(fetched.body), content_type, None
            )
            media = await self._media.get_media(mxc, timeout_ms=0)
        except MatrixError as e:  # e.g. the user's quota
            logger.info("preview image not stored", extra={"errcode": str(e.code)})
            return {}
        out: dict[str, Any] = {
            "og:image": str(mxc),
            "og:image:type": content_type,
            "matrix:image:size": len(fetched.body),
        }
        if media.width is not None:
            out["og:image:width"], out["og:image:height"] = media.width, media.height
        return out

    async def fetch(self, url: str) -> Fetched:
        """GET ``url`` through the outbound transport, following redirects; at most
        max_bytes of its body."""
        _check_url(url)
        # A client per fetch: no connection outlives the preview that opened it.
        async with self._outbound.client(
            timeout_s=self._config.timeout_ms / 1000,
            max_redirects=self._config.max_redirects,
            user_agent=self._config.user_agent,
        ) as http:
            try:
                response = await http.request(
                    "GET",
                    url,
                    max_bytes=self._config.max_bytes,
                    truncate=True,  # the head of a page is what matters
                    headers={"Accept": ACCEPT},
                )
            except OutboundError as e:
                raise _matrix_error(e) from e
        if response.status_code != 200:
            raise MatrixError(Codes.UNKNOWN, f"The URL answered {response.status_code}", status=502)
        return Fetched(
            url=response.url,
            body=response.body,
            content_type=response.headers.get("content-type", "application/octet-stream"),
        )


def _matrix_error(e: OutboundError) -> MatrixError:
    if e.reason is Reason.REFUSED:
        return MatrixError(Codes.FORBIDDEN, "URL previews of private addresses are not allowed")
    if e.reason is Reason.TIMEOUT:
        return MatrixError(Codes.UNKNOWN, "Timed out fetching the URL", status=504)
    if e.reason is Reason.UNRESOLVABLE:
        return MatrixError(Codes.UNKNOWN, "Could not resolve the host", status=502)
    if e.reason is Reason.TOO_MANY_REDIRECTS:
        return MatrixError(Codes.UNKNOWN, "Too many redirects", status=502)
    return MatrixError(Codes.UNKNOWN, "Could not fetch the URL", status=502)


def _check_url(url: str) -> None:
    if len(url) > MAX_URL_CHARS:
        raise MatrixError(Codes.INVALID_PARAM, "The URL is too long")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise MatrixError(Codes.INVALID_PARAM, "Invalid URL") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MatrixError(Codes.INVALID_PARAM, "Only http and https URLs can be previewed")
    if parts.username is not None or parts.password is not None:
        raise MatrixError(Codes.INVALID_PARAM, "URLs with credentials are not previewed")


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class _OpenGraphParser(HTMLParser):
    """Collects ``<meta property|name content>`` and ``<title>`` from a page's head."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.meta: dict[str, str] = {}
        self.title: str | None = None
        self._in_title = False
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.done = True
        elif tag == "title" and self.title is None:
            self._in_title = True
            self.title = ""
        elif tag == "meta":
            values = dict(attrs)
            name = values.get("property") or values.get("name")
            content = values.get("content")
            if name and content is not None and len(self.meta) < MAX_PROPERTIES:
                self.meta.setdefault(name.strip().lower(), content.strip()[:MAX_VALUE_CHARS])

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "head":
            self.done = True

    def handle_data(self, data: str) -> None:
        if self._in_title and self.title is not None and len(self.title) < MAX_VALUE_CHARS:
            self.title += data


def parse_opengraph(body: bytes, content_type: str) -> dict[str, Any]:
    charset = "utf-8"
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    parser = _OpenGraphParser()
    for start in range(0, min(len(text), MAX_HTML_PARSE_CHARS), 16 * 1024):
        parser.feed(text[start : start + 16 * 1024])
        if parser.done:
            break
    og: dict[str, Any] = {k: v for k, v in parser.meta.items() if k.startswith("og:")}
    if "og:title" not in og and parser.title and parser.title.strip():
        og["og:title"] = " ".join(parser.title.split())[:MAX_VALUE_CHARS]
    if "og:description" not in og and parser.meta.get("description"):
        og["og:description"] = parser.meta["description"]
    return og
