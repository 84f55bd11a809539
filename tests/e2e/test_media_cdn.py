"""The media CDN: real nginx running config/nginx-media.conf in front of a real server.

A download is redirected to a signed URL on the edge; the first request misses the cache,
the second hits it, both with the right bytes; unsigned, tampered and expired URLs are refused
by the edge itself, and by the origin too.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from media_repo.cdn import CdnSigner
from tests.e2e.conftest import ServerProcess, free_port
from tests.unit.test_thumbnailer import make_image

ROOT = Path(__file__).resolve().parents[2]
SECRET = "edge-secret-" + "x" * 20
PASSWORD = "correct horse battery"
APT_TIMEOUT_S = 600


def _ensure_nginx() -> str:
    """nginx from Debian: installed here if missing (CI runs as root on a Debian machine)."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "nginx"]
    if subprocess.run(install, env=env, capture_output=True, timeout=APT_TIMEOUT_S).returncode:
        subprocess.run(
            ["apt-get", "update"], env=env, capture_output=True, check=True, timeout=APT_TIMEOUT_S
        )
        subprocess.run(install, env=env, capture_output=True, check=True, timeout=APT_TIMEOUT_S)
    for path in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if path and Path(path).exists():
            return path
    raise RuntimeError("nginx is not installed and apt-get could not install it")


class Nginx:
    def __init__(self, run_dir: Path, port: int, upstream_port: int) -> None:
        self.run_dir = run_dir
        self.port = port
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._upstream_port = upstream_port
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = _ensure_nginx()
        conf = (ROOT / "config" / "nginx-media.conf").read_text()
        for old, new in [
            ("server 127.0.0.1:8008;", f"server 127.0.0.1:{self._upstream_port};"),
            ("listen 127.0.0.1:8090;", f"listen 127.0.0.1:{self.port};"),
            ("CHANGE_ME_TO_MEDIA_CDN_SECRET", SECRET),
            ("worker_processes auto;", "worker_processes 1;"),
        ]:
            assert old in conf, old
            conf = conf.replace(old, new)
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "nginx.conf").write_text(conf)
        base = [binary, "-p", f"{self.run_dir}/", "-c", "nginx.conf", "-e", "error.log"]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        # In the foreground, so that this process owns it and stops it by PID.
        self._proc = subprocess.Popen(
            [*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError((self.run_dir / "error.log").read_text())
            try:
                httpx.get(self.base_url + "/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGQUIT)  # graceful: finish, then exit
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Nginx]]:
    workdir = tmp_path_factory.mktemp("cdn")
    port = free_port()
    server = ServerProcess(
        workdir, None, media={"cdn": {"base_url": f"http://127.0.0.1:{port}", "secret": SECRET}}
    )
    # nginx workers run as nobody: their directory must be reachable, which pytest's
    # private temporary directories are not.
    edge_dir = Path(tempfile.mkdtemp(prefix="media-edge-"))
    edge_dir.chmod(0o755)
    nginx = Nginx(edge_dir, port, server.port)
    server.start()
    try:
        nginx.start()
        try:
            yield server, nginx
        finally:
            nginx.stop()
    finally:
        server.stop()
        shutil.rmtree(edge_dir, ignore_errors=True)


async def _register(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    response = await client.post(
        "/_matrix/client/v3/register",
        json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_download_through_the_edge(edge: tuple[ServerProcess, Nginx]) -> None:
    server, nginx = edge
    data = os.urandom(300_000)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as hs:
        auth = await _register(hs, "alice")
        response = await hs.post(
            "/_matrix/media/v3/upload",
            content=data,
            headers={**auth, "Content-Type": "video/mp4"},
            params={"filename": "clip.mp4"},
        )
        path = response.json()["content_uri"][len("mxc://") :]
        response = await hs.get(f"/_matrix/client/v1/media/download/{path}", headers=auth)
        assert response.status_code == 307
        location = response.headers["location"]
        assert location.startswith(nginx.base_url + "/_matrix/media/cdn/download/")

    async with httpx.AsyncClient(timeout=30) as client:
        first = await client.get(location)
        assert first.status_code == 200, first.text
        assert (first.headers["x-cache-status"], first.content) == ("MISS", data)
        assert first.headers["content-disposition"] == 'inline; filename="clip.mp4"'
        assert first.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert "sandbox" in first.headers["content-security-policy"]
        second = await client.get(location)
        assert (second.status_code, second.headers["x-cache-status"]) == (200, "HIT")
        assert second.content == data
        # Another valid signature of the same file is the same cache entry.
        parts = urlsplit(location)
        signer = CdnSigner(nginx.base_url, SECRET, 600_000)
        later = signer.url(parts.path, int(time.time() * 1000) + 60_000)
        third = await client.get(later)
        assert (third.headers["x-cache-status"], third.content) == ("HIT", data)
        ranged = await client.get(location, headers={"Range": "bytes=100-199"})
        assert (ranged.status_code, ranged.content) == (206, data[100:200])

        # Refused at the edge: no signature, a wrong one, another file's, an expired one.
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        base = f"{nginx.base_url}{parts.path}"
        assert (await client.get(base)).status_code == 403
        assert (await client.get(base, params={**query, "md5": "A" * 22})).status_code == 403
        other = base.replace(parts.path.rsplit("/", 1)[1], "someOtherMediaId")
        assert (await client.get(other, params=query)).status_code == 403
        expired_at = int(time.time()) - 10
        expired = {"md5": signer.signature(parts.path, expired_at), "expires": str(expired_at)}
        assert (await client.get(base, params=expired)).status_code == 410
        # The origin refuses them too, so going around the edge gains nothing.
        origin = f"{server.base_url}{parts.path}"
        unsigned: dict[str, str] = {}
        for params in (unsigned, expired):
            response = await client.get(origin, params=params)
            assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_thumbnail_through_the_edge(edge: tuple[ServerProcess, Nginx]) -> None:
    server, _ = edge
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=30, follow_redirects=True
    ) as client:
        auth = await _register(client, "bob")
        response = await client.post(
            "/_matrix/media/v3/upload",
            headers={**auth, "Content-Type": "image/jpeg"},
            content=make_image("JPEG", 1200, 800),
        )
        path = response.json()["content_uri"][len("mxc://") :]
        statuses = []
        for _ in range(2):
            # A client that follows the redirect, as matrix-nio and browsers do.
            response = await client.get(
                f"/_matrix/client/v1/media/thumbnail/{path}",
                params={"width": 320, "height": 240},
                headers=auth,
            )
            assert response.status_code == 200, response.text
            assert response.history[0].status_code == 307
            assert Image.open(io.BytesIO(response.content)).size == (320, 213)
            statuses.append(response.headers["x-cache-status"])
        assert statuses == ["MISS", "HIT"]
