"""Two of our servers over TLS on loopback: a user of one downloads media uploaded on the
other, and a thumbnail of it, through the signed federation media API."""

from __future__ import annotations

import io

import httpx
from PIL import Image

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_federation_two_servers import register, two_servers
from tests.unit.test_thumbnailer import make_image

__all__ = ["two_servers"]  # the fixture, shared


def test_remote_media_download_and_thumbnail(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_servers
    alice = register(a, "alice", "Alice")
    bob = register(b, "bob", "Bob")
    image = make_image("PNG", 400, 300)
    with httpx.Client(base_url=a.base_url, verify=a.verify, timeout=20) as c:
        r = c.post(
            "/_matrix/media/v3/upload",
            params={"filename": "photo.png"},
            headers={"Authorization": f"Bearer {alice}", "Content-Type": "image/png"},
            content=image,
        )
        assert r.status_code == 200, r.text
        mxc = r.json()["content_uri"]
    server_name, media_id = mxc.removeprefix("mxc://").split("/")
    auth = {"Authorization": f"Bearer {bob}"}
    with httpx.Client(base_url=b.base_url, verify=b.verify, timeout=30) as c:
        for _ in range(2):  # the second from b's cache
            r = c.get(f"/_matrix/client/v1/media/download/{server_name}/{media_id}", headers=auth)
            assert r.status_code == 200, r.text
            assert r.content == image
            assert r.headers["content-type"] == "image/png"
            assert "photo.png" in r.headers["content-disposition"]
        r = c.get(
            f"/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}",
            params={"width": 32, "height": 32, "method": "crop"},
            headers=auth,
        )
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (32, 32)
        r = c.get(f"/_matrix/client/v1/media/download/{server_name}/nosuchmedia", headers=auth)
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
