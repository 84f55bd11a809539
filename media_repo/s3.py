"""The S3-compatible backend (AWS S3, SeaweedFS, MinIO): aioboto3, path-style, SigV4.

One client per worker, opened on first use and closed with the homeserver. Uploads larger
than one part go up as a multipart upload, one part at a time, so a 100 MB file never takes
more than ``PART_BYTES`` of memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aioboto3  # type: ignore[import-untyped]
import anyio
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from homeserver.core.config import MediaStorageS3Config
from media_repo.backends import READ_CHUNK_BYTES

logger = logging.getLogger(__name__)

# S3 parts are at least 5 MiB (but the last); 8 MiB is what the AWS tools use.
PART_BYTES = 8 * 1024 * 1024


class S3Backend:
    def __init__(self, config: MediaStorageS3Config) -> None:
        self._config = config
        self._prefix = config.prefix
        self._bucket = config.bucket
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def _s3(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                session = aioboto3.Session()
                stack = AsyncExitStack()
                client = await stack.enter_async_context(
                    session.client(
                        "s3",
                        endpoint_url=self._config.endpoint_url,
                        region_name=self._config.region,
                        aws_access_key_id=self._config.access_key_id,
                        aws_secret_access_key=self._config.secret_access_key,
                        config=AioConfig(
                            signature_version="s3v4",
                            s3={"addressing_style": "path"},
                            retries={"max_attempts": 3, "mode": "standard"},
                        ),
                    )
                )
                try:
                    await self._ensure_bucket(client)
                except BaseException:
                    await stack.aclose()
                    raise
                self._stack, self._client = stack, client
        return self._client

    async def _ensure_bucket(self, client: Any) -> None:
        try:
            await client.head_bucket(Bucket=self._bucket)
        except ClientError as e:
            if _status(e) != 404:
                raise
            logger.info("creating media bucket", extra={"bucket": self._bucket})
            try:
                await client.create_bucket(Bucket=self._bucket)
            except ClientError as e2:
                # Another worker created it first.
                if _code(e2) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        s3 = await self._s3()
        size = (await anyio.Path(path).stat()).st_size
        try:
            if size <= PART_BYTES:
                data = await anyio.Path(path).read_bytes()
                await s3.put_object(
                    Bucket=self._bucket, Key=self._key(key), Body=data, ContentType=content_type
                )
            else:
                await self._multipart(s3, key, path, content_type)
        finally:
            await anyio.Path(path).unlink(missing_ok=True)

    async def _multipart(self, s3: Any, key: str, path: Path, content_type: str) -> None:
        upload = await s3.create_multipart_upload(
            Bucket=self._bucket, Key=self._key(key), ContentType=content_type
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            async with await anyio.open_file(path, "rb") as f:
                number = 1
                while chunk := await f.read(PART_BYTES):
                    part = await s3.upload_part(
                        Bucket=self._bucket,
                        Key=self._key(key),
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                    )
                    parts.append({"PartNumber": number, "ETag": part["ETag"]})
                    number += 1
            await s3.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await s3.abort_multipart_upload(
                        Bucket=self._bucket, Key=self._key(key), UploadId=upload_id
                    )
                except Exception:
                    logger.warning("could not abort a multipart upload", exc_info=True)
            raise

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        s3 = await self._s3()
        await s3.put_object(
            Bucket=self._bucket, Key=self._key(key), Body=data, ContentType=content_type
        )

    async def exists(self, key: str) -> bool:
        s3 = await self._s3()
        try:
            await s3.head_object(Bucket=self._bucket, Key=self._key(key))
        except ClientError as e:
            if _status(e) == 404:
                return False
            raise
        return True

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self._bucket, Key=self._key(key))  # absent: no error

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        response = await s3.get_object(
            Bucket=self._bucket, Key=self._key(key), Range=f"bytes={start}-{end}"
        )
        body = response["Body"]
        try:
            while chunk := await body.read(READ_CHUNK_BYTES):
                yield chunk
        finally:
            body.close()  # a client that stops reading releases the connection

    async def fetch_to_file(self, key: str, path: Path) -> None:
        s3 = await self._s3()
        # No Range: a range of an empty object is an error.
        response = await s3.get_object(Bucket=self._bucket, Key=self._key(key))
        body = response["Body"]
        try:
            async with await anyio.open_file(path, "wb") as f:
                while chunk := await body.read(READ_CHUNK_BYTES):
                    await f.write(chunk)
        finally:
            body.close()

    def local_path(self, key: str) -> Path | None:
        return None

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack, self._client = None, None


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
