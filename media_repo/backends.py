"""Where media bytes live: the backend protocol and the filesystem backend.

Keys are relative paths chosen by the service (``content/ab/cd/<sha256>``, ``thumbnails/...``);
a backend never sees a user-supplied string. Content is immutable: a key, once written,
always holds the same bytes, which is what makes de-duplication and caching safe.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol

import anyio

from homeserver.core.config import MediaStorageConfig

# Reads are done in chunks of this size, each in a worker thread: large enough that a
# 100 MB download costs ~200 thread hops, small enough that memory per download stays flat.
READ_CHUNK_BYTES = 512 * 1024


class MediaBackend(Protocol):
    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the file at ``path`` (a spool file the backend may move) under ``key``."""

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; one already gone is fine."""

    def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive) of ``key``, in chunks."""

    async def fetch_to_file(self, key: str, path: Path) -> None:
        """Copy ``key`` into the local file ``path`` (for decoding images)."""

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key`` if the backend is local, else None."""

    async def close(self) -> None: ...


class FilesystemBackend:
    """Files under one root directory (the embedded default: ``<data_dir>/media``)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self._root / key

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        dest = self._path(key)

        def move() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # The spool lives on the same filesystem: an atomic rename, never a copy, and a
            # reader sees either no file or the whole file.
            os.replace(path, dest)

        await anyio.to_thread.run_sync(move)

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        dest = self._path(key)

        def write() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, dest)
            except BaseException:
                os.unlink(tmp)
                raise

        await anyio.to_thread.run_sync(write)

    async def exists(self, key: str) -> bool:
        return await anyio.to_thread.run_sync(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        await anyio.Path(self._path(key)).unlink(missing_ok=True)

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        # One thread hop per chunk: open, seek and the first read share one, and the last
        # read closes the file, so a file of one chunk (most media) costs a single hop.
        remaining = end - start + 1
        f, chunk = await anyio.to_thread.run_sync(_open_and_read, self._path(key), start, remaining)
        try:
            while chunk:
                remaining -= len(chunk)
                yield chunk
                if f is None:
                    return
                f, chunk = await anyio.to_thread.run_sync(_read_on, f, remaining)
        finally:
            if f is not None:  # the reader stopped early (a client gone, a cancellation)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(f.close)

    async def fetch_to_file(self, key: str, path: Path) -> None:
        raise NotImplementedError("a local backend is read in place: use local_path")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def close(self) -> None:
        return None


def _open_and_read(path: Path, start: int, length: int) -> tuple[BinaryIO | None, bytes]:
    f = open(path, "rb")  # noqa: SIM115 (closed by _read_on, or by the reader)
    try:
        f.seek(start)
    except BaseException:
        f.close()
        raise
    return _read_on(f, length)


def _read_on(f: BinaryIO, remaining: int) -> tuple[BinaryIO | None, bytes]:
    """The next chunk of ``f``, with ``f`` unless that was the last read, which closes it.
    Only an empty read is the end of the file, not a short one."""
    try:
        chunk = f.read(min(READ_CHUNK_BYTES, remaining))
    except BaseException:
        f.close()
        raise
    if not chunk or len(chunk) >= remaining:
        f.close()
        return None, chunk
    return f, chunk


def build_backend(config: MediaStorageConfig, data_path: Path) -> MediaBackend:
    """The backend the config selects (S3's client library is only imported for S3)."""
    if config.backend == "s3":
        from media_repo.s3 import S3Backend

        return S3Backend(config.s3)
    return FilesystemBackend(data_path / config.path)


def spool_dir(config: MediaStorageConfig, data_path: Path) -> Path:
    """Where uploads stream to before they are stored: next to the filesystem media, so
    that storing one is a rename."""
    return data_path / config.path / "tmp"
