"""The admin API as a new operator uses it from docs/admin-api.md, against a real server
process: register an administrator with the CLI, create a registration token, find and
delete a user's media, read a report. And media deleted on S3 (a real SeaweedFS) is gone
from the bucket, thumbnails too."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from homeserver.core.config import MediaStorageS3Config
from media_repo.s3 import S3Backend
from media_repo.service import content_key
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_media_s3 import SeaweedFS, seaweed  # noqa: F401 - the fixture
from tests.unit.test_thumbnailer import make_image

PASSWORD = "operator password"
V3 = "/_matrix/client/v3"
ADMIN = "/_synapse/admin"


def _register_admin(server: ServerProcess) -> None:
    """As docs/admin-api.md says: ``homeserver register-user NAME --admin``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "homeserver",
            "-c",
            str(server.config_path),
            "register-user",
            "root",
            "--password",
            PASSWORD,
            "--admin",
        ],
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("HS_")},
    )


async def _login(client: httpx.AsyncClient, user: str, password: str) -> str:
    r = await client.post(
        f"{V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        },
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, (r.request.url, r.text)
    return r.json()


async def _register_with_token(client: httpx.AsyncClient, name: str, token: str) -> str:
    body = {"username": name, "password": PASSWORD}
    session = (await client.post(f"{V3}/register", json=body)).json()["session"]
    auth = {"type": "m.login.registration_token", "token": token, "session": session}
    data = await _ok(await client.post(f"{V3}/register", json={**body, "auth": auth}))
    return str(data["access_token"])


@pytest.fixture(params=["sqlite", "postgresql"])
def closed_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose registration needs a token."""
    database_url = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("pg_database")
        from tests.conftest import in_thread, truncate

        in_thread(lambda: truncate(database_url))
    proc = ServerProcess(tmp_path, database_url, registration={"enabled": False})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def test_operator_walkthrough(closed_server: ServerProcess) -> None:
    server = closed_server
    _register_admin(server)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        admin = await _login(client, "root", PASSWORD)
        # A token for two newcomers.
        made = await _ok(
            await client.post(
                f"{ADMIN}/v1/registration_tokens/new", headers=_h(admin), json={"uses_allowed": 2}
            )
        )
        alice = await _register_with_token(client, "alice", made["token"])
        bob = await _register_with_token(client, "bob", made["token"])
        r = await client.post(f"{V3}/register", json={"username": "carol", "password": PASSWORD})
        # The token is used up: registration is closed again.
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        # Bob uploads and posts something; Alice reports it.
        r = await client.post(
            "/_matrix/media/v3/upload",
            headers={**_h(bob), "Content-Type": "application/octet-stream"},
            content=b"something nasty",
        )
        mxc = (await _ok(r))["content_uri"]
        room = (
            await _ok(
                await client.post(
                    f"{V3}/createRoom", headers=_h(bob), json={"preset": "public_chat"}
                )
            )
        )["room_id"]
        await _ok(await client.post(f"{V3}/join/{room}", headers=_h(alice), json={}))
        event_id = (
            await _ok(
                await client.put(
                    f"{V3}/rooms/{room}/send/m.room.message/1",
                    headers=_h(bob),
                    json={"msgtype": "m.file", "body": "look", "url": mxc},
                )
            )
        )["event_id"]
        await _ok(
            await client.post(
                f"{V3}/rooms/{room}/report/{event_id}", headers=_h(alice), json={"reason": "nasty"}
            )
        )
        # The operator reads the report, finds Bob's media and deletes it.
        reports = await _ok(await client.get(f"{ADMIN}/v1/event_reports", headers=_h(admin)))
        report = reports["event_reports"][0]
        assert (report["event_id"], report["reason"], report["sender"]) == (
            event_id,
            "nasty",
            "@bob:localhost",
        )
        media = await _ok(
            await client.get(f"{ADMIN}/v1/users/@bob:localhost/media", headers=_h(admin))
        )
        assert [m["media_id"] for m in media["media"]] == [mxc.rsplit("/", 1)[1]]
        deleted = await _ok(await client.delete(f"{ADMIN}/v1/media/{mxc[6:]}", headers=_h(admin)))
        assert deleted["total"] == 1
        r = await client.get(f"/_matrix/client/v1/media/download/{mxc[6:]}", headers=_h(alice))
        assert r.status_code == 404
        await _ok(
            await client.delete(f"{ADMIN}/v1/event_reports/{report['id']}", headers=_h(admin))
        )
        # A non-admin is refused.
        r = await client.get(f"{ADMIN}/v2/users", headers=_h(alice))
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_deleted_media_leaves_the_bucket(
    seaweed: SeaweedFS,  # noqa: F811
    tmp_path: Path,
) -> None:
    storage = seaweed.storage_config("admin-delete/")
    server = ServerProcess(tmp_path, None, media={"storage": storage})
    server.start()
    backend = S3Backend(MediaStorageS3Config.model_validate(storage["s3"]))
    try:
        _register_admin(server)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            admin = await _login(client, "root", PASSWORD)
            image = make_image("PNG", 640, 480)
            r = await client.post(
                "/_matrix/media/v3/upload",
                headers={**_h(admin), "Content-Type": "image/png"},
                content=image,
            )
            mxc = (await _ok(r))["content_uri"]
            r = await client.get(
                f"/_matrix/client/v1/media/thumbnail/{mxc[6:]}?width=32&height=32&method=crop",
                headers=_h(admin),
            )
            assert r.status_code == 200
            key = content_key(hashlib.sha256(image).hexdigest())
            assert await backend.exists(key)
            s3 = await backend._s3()
            listed = await s3.list_objects_v2(Bucket="media", Prefix="admin-delete/thumbnails/")
            assert listed.get("KeyCount", 0) >= 1
            await _ok(await client.delete(f"{ADMIN}/v1/media/{mxc[6:]}", headers=_h(admin)))
            assert not await backend.exists(key)
            listed = await s3.list_objects_v2(Bucket="media", Prefix="admin-delete/thumbnails/")
            assert listed.get("KeyCount", 0) == 0
            # Deleting what is already gone is no error for the backend.
            await backend.delete(key)
    finally:
        await backend.close()
        server.stop()
