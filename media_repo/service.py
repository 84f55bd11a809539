"""The media service: uploads, downloads and thumbnails of local media.

Content is stored once per sha256 under ``content/``; thumbnails once per (content, size,
method, animation) under ``thumbnails/``. Uploads stream into a spool file (hashing as they
go, never whole in memory) and are then handed to the backend. Remote media, which needs
federation, goes through ``fetch_remote_media``: fetched once (``media_repo/remote``), stored
like an upload and kept in the remote media table; served from there afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

import anyio

from homeserver.core.clock import Clock
from homeserver.core.config import MediaConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.core.types import Requester
from homeserver.storage.media import ContentInfo, MediaInfo, MediaStore, ThumbnailInfo
from media_repo import thumbnailer
from media_repo.access import AccessRecorder
from media_repo.backends import MediaBackend
from media_repo.cdn import CdnSigner, download_path, thumbnail_path
from media_repo.mxc import MxcUri, new_media_id
from media_repo.remote import RemoteMediaSource, SingleFlight
from media_repo.thumbnailer import Method, ThumbnailError, ThumbnailSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Spooled bytes are written once this much has arrived: one thread hop per MiB, not per
# network read.
SPOOL_WRITE_BYTES = 1024 * 1024
# A download of pending media re-reads the database this often (another worker may have
# taken the upload); an upload on this worker wakes it at once.
PENDING_POLL_S = 1.0
# Thumbnails made on demand (sizes past the configured ones) are kept, up to this many per
# content; past it they are made and served but not stored, so a client asking for every
# size from 1x1 up cannot fill the disk.
MAX_STORED_THUMBNAILS_PER_CONTENT = 32
# Remote files are held in memory (up to max_upload_bytes each) between the federation answer
# and the spool: this many are fetched at once, the rest wait their turn.
REMOTE_FETCH_CONCURRENCY = 4
MAX_CONTENT_TYPE_CHARS = 255
MAX_FILENAME_BYTES = 255
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[\x20-\x7e]*)?\Z")
DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Blob:
    """Bytes to send: stored content, a stored thumbnail, or a thumbnail just made."""

    size: int
    content_type: str
    etag: str
    filename: str | None
    key: str
    data: bytes | None = None  # set when the bytes are already in memory


@dataclass(frozen=True, slots=True)
class Spooled:
    path: Path
    size: int
    sha256: str


def content_key(sha256: str) -> str:
    return f"content/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def thumbnail_key(sha256: str, spec: ThumbnailSpec) -> str:
    suffix = "-animated" if spec.animated else ""
    return (
        f"thumbnails/{sha256[:2]}/{sha256[2:4]}/{sha256}/"
        f"{spec.width}x{spec.height}-{spec.method}{suffix}"
    )


def check_content_type(raw: str | None) -> str:
    value = (raw or "").strip()
    if not value:
        return DEFAULT_CONTENT_TYPE
    if len(value) > MAX_CONTENT_TYPE_CHARS or not _CONTENT_TYPE.match(value):
        raise MatrixError(Codes.INVALID_PARAM, "Invalid Content-Type")
    return value


def check_filename(raw: str | None) -> str | None:
    if not raw:
        return None
    if len(raw.encode()) > MAX_FILENAME_BYTES:
        raise MatrixError(
            Codes.INVALID_PARAM, f"File name is longer than {MAX_FILENAME_BYTES} bytes"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in raw):
        raise MatrixError(Codes.INVALID_PARAM, "File name has control characters")
    return raw


class Quarantine(Protocol):
    async def is_quarantined(self, server_name: str, media_id: str) -> bool: ...


class MediaService:
    def __init__(
        self,
        store: MediaStore,
        backend: MediaBackend,
        clock: Clock,
        server_name: str,
        config: MediaConfig,
        spool_dir: Path,
        *,
        ratelimiter: RateLimiter | None = None,
        quarantine: Quarantine | None = None,
        remote_source: RemoteMediaSource | None = None,
        access: AccessRecorder | None = None,
    ) -> None:
        # Downloads and thumbnails mark the media's last access (media_repo/access.py).
        self._access = access
        self._ratelimiter = ratelimiter
        # Other servers' media (federation on); None: remote media is not found.
        self._remote_source = remote_source
        self._remote_fetches: SingleFlight[ContentInfo] = SingleFlight()
        self._remote_limiter: anyio.CapacityLimiter | None = None
        # Media the server's administrators quarantined is served to nobody (the admin API).
        self._quarantine = quarantine
        self._store = store
        self._backend = backend
        self._clock = clock
        self.server_name = server_name
        self.config = config
        self._spool_dir = spool_dir
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._limiter: anyio.CapacityLimiter | None = None
        self._arrivals: dict[str, asyncio.Event] = {}
        self.cdn: CdnSigner | None = None
        if config.cdn.base_url is not None and config.cdn.secret is not None:
            self.cdn = CdnSigner(config.cdn.base_url, config.cdn.secret, config.cdn.url_lifetime_ms)

    async def close(self) -> None:
        if self._access is not None:
            try:
                await self._access.flush()
            except Exception:
                logger.exception("last access of media not written")
        await self._backend.close()

    def public_config(self) -> dict[str, Any]:
        return {"m.upload.size": self.config.max_upload_bytes}

    # --- uploads ---------------------------------------------------------------------------

    async def check_upload_allowed(self, requester: Requester, declared: int | None) -> None:
        """Refuse before the body is read when its declared length says it cannot fit."""
        limit = self.config.max_upload_bytes
        if declared is not None and declared > limit:
            raise MatrixError(Codes.TOO_LARGE, f"Cannot upload files larger than {limit} bytes")
        await self._check_quota(requester, declared or 0)

    async def _check_quota(self, requester: Requester, size: int) -> None:
        quota = self.config.user_quota_bytes
        if quota is None:
            return
        used = await self._store.usage_bytes(requester.user_id)
        if used + size > quota:
            raise MatrixError(
                Codes.FORBIDDEN, f"Upload quota exceeded: {used} of {quota} bytes used"
            )

    async def upload(
        self,
        requester: Requester,
        body: AsyncIterator[bytes],
        declared: int | None,
        content_type: str,
        filename: str | None,
    ) -> MxcUri:
        """POST /upload: store the body under a new media ID."""
        await self.check_upload_allowed(requester, declared)
        content = await self._receive(requester, body, content_type, filename)
        media_id = new_media_id()
        await self._store.add_media(media_id, requester.user_id, self._clock.now_ms(), content)
        logger.info("media uploaded", extra={"media_id": media_id, "size": content.size})
        return MxcUri(self.server_name, media_id)

    async def create(self, requester: Requester) -> tuple[MxcUri, int]:
        """POST /create: a media ID whose content comes later; returns its expiry."""
        if self._ratelimiter is not None:
            await self._ratelimiter.check(
                Action.MEDIA_CREATE, requester.user_id, exempt=requester.is_admin
            )
        now = self._clock.now_ms()
        expires = now + self.config.pending_upload_lifetime_ms
        media_id = new_media_id()
        if not await self._store.add_pending(
            media_id, requester.user_id, now, expires, self.config.max_pending_uploads
        ):
            raise MatrixError(
                Codes.LIMIT_EXCEEDED, "Too many pending uploads", retry_after_ms=60_000
            )
        return MxcUri(self.server_name, media_id), expires

    async def upload_pending(
        self,
        requester: Requester,
        mxc: MxcUri,
        body: AsyncIterator[bytes],
        declared: int | None,
        content_type: str,
        filename: str | None,
    ) -> None:
        """PUT /upload/{serverName}/{mediaId}: the content of a media ID from /create."""
        media = await self._pending_of(requester, mxc)
        await self.check_upload_allowed(requester, declared)
        content = await self._receive(requester, body, content_type, filename)
        if not await self._store.complete_pending(media.media_id, self._clock.now_ms(), content):
            # Raced with another upload to it, or it lapsed while the body streamed in.
            await self._pending_of(requester, mxc)
            raise MatrixError(Codes.NOT_FOUND, "Unknown media ID")
        event = self._arrivals.pop(media.media_id, None)
        if event is not None:
            event.set()

    async def _pending_of(self, requester: Requester, mxc: MxcUri) -> MediaInfo:
        media = None
        if mxc.server_name == self.server_name:
            media = await self._store.get_media(mxc.media_id)
        if media is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown media ID")
        if media.user_id != requester.user_id:
            raise MatrixError(Codes.FORBIDDEN, "This media ID was created by another user")
        if media.uploaded:
            raise MatrixError(Codes.CANNOT_OVERWRITE_MEDIA, "Media already uploaded")
        if media.expires_ts is not None and media.expires_ts <= self._clock.now_ms():
            raise MatrixError(Codes.NOT_FOUND, "The media ID has expired")
        return media

    async def _receive(
        self,
        requester: Requester | None,
        body: AsyncIterator[bytes],
        content_type: str,
        filename: str | None,
    ) -> ContentInfo:
        """Spool, check the quota (of a local uploader), store content (once per sha256)
        and its thumbnails."""
        spooled = await self._spool(body)
        try:
            if requester is not None:
                await self._check_quota(requester, spooled.size)
            probe = await self._probe(spooled.path, spooled.size, content_type)
            rendered: list[thumbnailer.Rendered] = []
            if probe is not None and self.config.thumbnails.enabled:
                rendered = await self._pregenerate(spooled, probe)
            key = content_key(spooled.sha256)
            if await self._backend.exists(key):
                logger.info("media content de-duplicated", extra={"sha256": spooled.sha256})
            else:
                await self._backend.put_file(key, spooled.path, content_type)
            for item in rendered:
                await self._keep_thumbnail(spooled.sha256, item)
        finally:
            await anyio.Path(spooled.path).unlink(missing_ok=True)
        return ContentInfo(
            size=spooled.size,
            sha256=spooled.sha256,
            content_type=content_type,
            upload_name=filename,
            width=probe.width if probe else None,
            height=probe.height if probe else None,
            animated=probe.animated if probe else False,
        )

    async def _spool(self, body: AsyncIterator[bytes]) -> Spooled:
        limit = self.config.max_upload_bytes
        path = self._spool_dir / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        f: BinaryIO = await anyio.to_thread.run_sync(lambda: open(path, "wb"))  # noqa: SIM115
        size = 0
        try:
            pending: list[bytes] = []
            pending_bytes = 0

            def flush(chunks: list[bytes]) -> None:
                for chunk in chunks:
                    digest.update(chunk)
                    f.write(chunk)

            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise MatrixError(
                        Codes.TOO_LARGE, f"Cannot upload files larger than {limit} bytes"
                    )
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= SPOOL_WRITE_BYTES:
                    chunks, pending, pending_bytes = pending, [], 0
                    await anyio.to_thread.run_sync(flush, chunks)
            await anyio.to_thread.run_sync(flush, pending)
            await anyio.to_thread.run_sync(f.close)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(f.close)
                await anyio.Path(path).unlink(missing_ok=True)
            raise
        return Spooled(path=path, size=size, sha256=digest.hexdigest())

    # --- image work ------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.config.thumbnails.concurrency)
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    async def _probe(
        self, path: Path, size: int, content_type: str
    ) -> thumbnailer.ImageProbe | None:
        """The image's size, for images that can be thumbnailed; None for anything else."""
        if not content_type.lower().startswith("image/"):
            return None
        if size > self.config.thumbnails.max_source_bytes:
            return None
        max_pixels = self.config.thumbnails.max_image_pixels
        try:
            return await self._in_thread(lambda: thumbnailer.probe(path, max_pixels))
        except ThumbnailError as e:
            logger.info("uploaded image not thumbnailable", extra={"reason": e.kind})
            return None

    def _spec(
        self,
        probe_width: int,
        probe_height: int,
        width: int,
        height: int,
        method: Method,
        animated: bool,
    ) -> ThumbnailSpec:
        w, h = thumbnailer.thumbnail_size(probe_width, probe_height, width, height, method)
        return ThumbnailSpec(w, h, method, animated)

    async def _pregenerate(
        self, spooled: Spooled, probe: thumbnailer.ImageProbe
    ) -> list[thumbnailer.Rendered]:
        specs: list[ThumbnailSpec] = []
        for size in self.config.thumbnails.sizes:
            spec = self._spec(
                probe.width, probe.height, size.width, size.height, size.method, False
            )
            if (
                spec not in specs
                and await self._store.get_thumbnail(
                    spooled.sha256, spec.width, spec.height, spec.method, False
                )
                is None
            ):
                specs.append(spec)
        max_pixels = self.config.thumbnails.max_image_pixels
        try:
            return await self._in_thread(
                lambda: thumbnailer.render(spooled.path, specs, max_pixels)
            )
        except ThumbnailError as e:
            # The upload stands; asking for a thumbnail later gives the error.
            logger.info("thumbnails not made on upload", extra={"reason": e.kind})
            return []

    async def _keep_thumbnail(
        self, sha256: str, item: thumbnailer.Rendered, spec: ThumbnailSpec | None = None
    ) -> None:
        """Store a thumbnail under ``spec`` (what was asked) or its own spec."""
        spec = spec or item.spec
        await self._backend.put_bytes(thumbnail_key(sha256, spec), item.data, item.content_type)
        await self._store.add_thumbnail(
            ThumbnailInfo(
                sha256=sha256,
                width=spec.width,
                height=spec.height,
                method=spec.method,
                animated=spec.animated,
                content_type=item.content_type,
                size=len(item.data),
            ),
            self._clock.now_ms(),
        )

    async def delete_content(
        self, sha256s: list[str], thumbnails: list[tuple[str, int, int, str, bool]]
    ) -> None:
        """Remove content no media uses any more, and its thumbnails, from the backend (the
        admin API deletes the rows first: a download in between finds no media)."""
        for sha256, width, height, method, animated in thumbnails:
            if method not in ("crop", "scale"):
                continue  # a row no thumbnailer wrote: no object of its
            spec = ThumbnailSpec(
                width=width,
                height=height,
                method="crop" if method == "crop" else "scale",
                animated=animated,
            )
            await self._backend.delete(thumbnail_key(sha256, spec))
        for sha256 in sha256s:
            await self._backend.delete(content_key(sha256))
        logger.info("media content deleted", extra={"count": len(sha256s)})

    # --- downloads -------------------------------------------------------------------------

    async def fetch_remote_media(self, mxc: MxcUri, *, timeout_ms: int, legacy: bool) -> MediaInfo:
        """Media of another server: from the cache, else fetched over federation (once for
        all the requests that ask meanwhile) and kept."""
        if self._remote_source is None:
            raise MatrixError(Codes.NOT_FOUND, "Remote media needs federation, which is off")
        if legacy and not self.config.allow_unauthenticated_downloads:
            # spec 1.11: remote media is fetched for authenticated requests only.
            raise MatrixError(Codes.NOT_FOUND, "Media not found")
        if self._quarantine is not None and await self._quarantine.is_quarantined(
            mxc.server_name, mxc.media_id
        ):
            raise MatrixError(Codes.NOT_FOUND, "Media not found")
        now = self._clock.now_ms()
        content = await self._store.get_remote_media(mxc.server_name, mxc.media_id)
        if content is None:
            wait_ms = min(timeout_ms, self.config.max_download_wait_ms)
            content = await self._remote_fetches.run(
                (mxc.server_name, mxc.media_id), lambda: self._fetch_remote(mxc, wait_ms)
            )
        else:
            await self._store.touch_remote_media(mxc.server_name, mxc.media_id, now)
        return MediaInfo(
            media_id=mxc.media_id,
            user_id=UserID(""),  # nobody of ours uploaded it
            created_ts=now,
            expires_ts=None,
            upload_ts=now,
            content_type=content.content_type,
            upload_name=content.upload_name,
            size=content.size,
            sha256=content.sha256,
            width=content.width,
            height=content.height,
            animated=content.animated,
        )

    async def _fetch_remote(self, mxc: MxcUri, timeout_ms: int) -> ContentInfo:
        assert self._remote_source is not None
        if self._remote_limiter is None:
            self._remote_limiter = anyio.CapacityLimiter(REMOTE_FETCH_CONCURRENCY)
        async with self._remote_limiter:
            fetched = await self._remote_source.fetch(
                mxc.server_name,
                mxc.media_id,
                max_bytes=self.config.max_upload_bytes,
                timeout_ms=timeout_ms,
            )
            # What another server says of its file is kept only when it would pass an upload.
            try:
                content_type = check_content_type(fetched.content_type)
            except MatrixError:
                content_type = DEFAULT_CONTENT_TYPE
            try:
                filename = check_filename(fetched.filename)
            except MatrixError:
                filename = None
            content = await self._receive(None, _one_chunk(fetched.body), content_type, filename)
        await self._store.add_remote_media(
            mxc.server_name, mxc.media_id, self._clock.now_ms(), content
        )
        stored = await self._store.get_remote_media(mxc.server_name, mxc.media_id)
        logger.info(
            "remote media cached",
            extra={"server": mxc.server_name, "media_id": mxc.media_id, "size": content.size},
        )
        return stored or content

    async def get_media(
        self, mxc: MxcUri, *, timeout_ms: int, allow_remote: bool = True, legacy: bool = False
    ) -> MediaInfo:
        """The uploaded media at ``mxc``, waiting up to ``timeout_ms`` for pending content."""
        if mxc.server_name != self.server_name:
            if not allow_remote:
                raise MatrixError(Codes.NOT_FOUND, "Remote media not requested")
            return await self.fetch_remote_media(mxc, timeout_ms=timeout_ms, legacy=legacy)
        wait_s = min(timeout_ms, self.config.max_download_wait_ms) / 1000
        deadline = time.monotonic() + wait_s
        while True:
            media = await self._store.get_media(mxc.media_id)
            if media is None or (
                self._quarantine is not None
                and await self._quarantine.is_quarantined(mxc.server_name, mxc.media_id)
            ):
                raise MatrixError(Codes.NOT_FOUND, "Media not found")
            if legacy and not self._legacy_allowed(media):
                # spec 1.11: unauthenticated media is frozen; new media is only authenticated.
                raise MatrixError(Codes.NOT_FOUND, "Media not found")
            if media.uploaded:
                if self._access is not None:
                    self._access.touch(mxc.media_id)
                return media
            if media.expires_ts is not None and media.expires_ts <= self._clock.now_ms():
                raise MatrixError(Codes.NOT_FOUND, "Media not found")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MatrixError(Codes.NOT_YET_UPLOADED, "Content has not yet been uploaded")
            event = self._arrivals.setdefault(mxc.media_id, asyncio.Event())
            with anyio.move_on_after(min(remaining, PENDING_POLL_S)):
                await event.wait()
            if not event.is_set() and self._arrivals.get(mxc.media_id) is event:
                # Not kept for uploads that never come; other waiters fall back to polling.
                del self._arrivals[mxc.media_id]

    def _legacy_allowed(self, media: MediaInfo) -> bool:
        return (
            self.config.allow_unauthenticated_downloads
            or media.created_ts < self.config.unauthenticated_freeze_ts
        )

    def download_blob(self, media: MediaInfo, filename: str | None) -> Blob:
        assert media.sha256 is not None and media.size is not None
        return Blob(
            size=media.size,
            content_type=media.content_type or DEFAULT_CONTENT_TYPE,
            etag=media.sha256,
            filename=filename or media.upload_name,
            key=content_key(media.sha256),
        )

    def read(self, blob: Blob, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive) of ``blob``."""
        if blob.data is not None:
            return _one_chunk(blob.data[start : end + 1])
        return self._backend.read(blob.key, start, end)

    def thumbnail_spec(
        self, media: MediaInfo, width: int, height: int, method: Method, animated: bool
    ) -> ThumbnailSpec | None:
        """The thumbnail that answers a request, or None if the image size is unknown."""
        if media.width is None or media.height is None:
            return None
        configured = [
            s
            for s in self.config.thumbnails.sizes
            if s.method == method
            and s.width >= width
            and s.height >= height
            and (method == "scale" or s.width * height == s.height * width)
        ]
        if configured:
            best = min(configured, key=lambda s: s.width * s.height)
            width, height = best.width, best.height
        return self._spec(
            media.width, media.height, width, height, method, animated and media.animated
        )

    async def thumbnail(
        self, media: MediaInfo, width: int, height: int, method: Method, animated: bool
    ) -> Blob:
        """A stored thumbnail, or one made now (and kept, within bounds)."""
        if not self.config.thumbnails.enabled:
            raise MatrixError(Codes.UNKNOWN, "Thumbnails are disabled on this server", status=400)
        assert media.sha256 is not None and media.size is not None
        if media.size > self.config.thumbnails.max_source_bytes:
            raise MatrixError(Codes.TOO_LARGE, "Content is too large to thumbnail")
        spec = self.thumbnail_spec(media, width, height, method, animated)
        if spec is not None:
            stored = await self._store.get_thumbnail(
                media.sha256, spec.width, spec.height, spec.method, spec.animated
            )
            if stored is not None:
                return Blob(
                    size=stored.size,
                    content_type=stored.content_type,
                    etag=_thumbnail_etag(media.sha256, spec),
                    filename=None,
                    key=thumbnail_key(media.sha256, spec),
                )
        item = await self._render(media, spec, width, height, method, animated)
        spec = spec or item.spec
        if await self._store.count_thumbnails(media.sha256) < MAX_STORED_THUMBNAILS_PER_CONTENT:
            await self._keep_thumbnail(media.sha256, item, spec)
        return Blob(
            size=len(item.data),
            content_type=item.content_type,
            etag=_thumbnail_etag(media.sha256, spec),
            filename=None,
            key=thumbnail_key(media.sha256, spec),
            data=item.data,
        )

    async def _render(
        self,
        media: MediaInfo,
        spec: ThumbnailSpec | None,
        width: int,
        height: int,
        method: Method,
        animated: bool,
    ) -> thumbnailer.Rendered:
        assert media.sha256 is not None
        key = content_key(media.sha256)
        local = self._backend.local_path(key)
        path = local or self._spool_dir / f"{uuid.uuid4().hex}.thumb"
        max_pixels = self.config.thumbnails.max_image_pixels
        try:
            if local is None:
                await self._backend.fetch_to_file(key, path)

            def run() -> thumbnailer.Rendered:
                wanted = spec
                if wanted is None:
                    # Not probed at upload (not an image, or not decodable): try now, so the
                    # client learns why.
                    probe = thumbnailer.probe(path, max_pixels)
                    w, h = thumbnailer.thumbnail_size(
                        probe.width, probe.height, width, height, method
                    )
                    wanted = ThumbnailSpec(w, h, method, animated and probe.animated)
                return thumbnailer.render(path, [wanted], max_pixels)[0]

            try:
                return await self._in_thread(run)
            except ThumbnailError as e:
                raise _thumbnail_error(e) from e
        finally:
            if local is None:
                await anyio.Path(path).unlink(missing_ok=True)

    # --- CDN -------------------------------------------------------------------------------

    def cdn_download_url(self, mxc: MxcUri) -> str | None:
        if self.cdn is None or mxc.server_name != self.server_name:
            return None
        return self.cdn.url(download_path(mxc.server_name, mxc.media_id), self._clock.now_ms())

    def cdn_thumbnail_url(self, mxc: MxcUri, spec: ThumbnailSpec) -> str | None:
        if self.cdn is None or mxc.server_name != self.server_name:
            return None
        path = thumbnail_path(
            mxc.server_name, mxc.media_id, spec.width, spec.height, spec.method, spec.animated
        )
        return self.cdn.url(path, self._clock.now_ms())

    def check_cdn_signature(self, path: str, md5: str | None, expires: str | None) -> None:
        """The origin side of the CDN: the edge's request carries a valid, live signature."""
        if self.cdn is None:
            raise MatrixError(Codes.NOT_FOUND, "No CDN is configured")
        if not self.cdn.verify(path, md5, expires, self._clock.now_ms()):
            raise MatrixError(Codes.FORBIDDEN, "Invalid or expired signature")


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _thumbnail_etag(sha256: str, spec: ThumbnailSpec) -> str:
    return f"{sha256}-{spec.width}x{spec.height}-{spec.method}" + ("-a" if spec.animated else "")


def _thumbnail_error(error: ThumbnailError) -> MatrixError:
    if error.kind == "too_large":
        return MatrixError(Codes.TOO_LARGE, error.message)
    # spec: 400 M_UNKNOWN when the server cannot thumbnail the content.
    return MatrixError(Codes.UNKNOWN, error.message, status=400)
