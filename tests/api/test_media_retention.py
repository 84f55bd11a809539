"""Media retention, on both databases: downloads and thumbnails mark the last access of
local media (at most once an hour), the retention job deletes media nobody fetched within
its lifetime with its files and thumbnails, keeps avatars and protected media, and runs on
the worker that holds its lease."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.config import ConfigError
from homeserver.storage.database import Database
from homeserver.storage.media_retention import JobLeaseStore
from homeserver.storage.schema import room_memberships
from media_repo.retention import MediaRetention
from tests.api.admin_helpers import call, make_admin
from tests.api.test_media import MEDIA, upload
from tests.conftest import make_config
from tests.helpers import auth_header, create_room, register, serve
from tests.unit.test_thumbnailer import make_image

DAY = 24 * 3600 * 1000
HOUR = 3600 * 1000
V3 = "/_matrix/client/v3"


def _stored_files(hs: Homeserver) -> set[str]:
    root = hs.config.data_path / "media"
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def _id(mxc: str) -> str:
    return mxc.rsplit("/", 1)[1]


async def _last_access(client: httpx.AsyncClient, admin: str, mxc: str) -> int | None:
    info = await call(client, admin, "GET", f"/v1/media/test/{_id(mxc)}")
    found: int | None = info["media_info"]["last_access_ts"]
    return found


async def _download(client: httpx.AsyncClient, token: str, mxc: str) -> int:
    r = await client.get(f"{MEDIA}/download/{mxc[6:]}", headers=auth_header(token))
    return r.status_code


async def test_last_access_is_recorded_once_an_hour(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    admin = await make_admin(hs, client)
    bob, token = await register(client, "bob")
    mxc = await upload(client, token, os.urandom(100))
    image = await upload(client, token, make_image("PNG", 200, 100), "image/png")
    other = await upload(client, token, os.urandom(100))
    assert await _last_access(client, admin, mxc) is None

    clock.advance(1000)
    first = clock.now_ms()
    assert await _download(client, token, mxc) == 200
    r = await client.get(
        f"{MEDIA}/thumbnail/{image[6:]}?width=32&height=32&method=scale",
        headers=auth_header(token),
    )
    assert r.status_code == 200
    await hs.media_access.flush()
    assert await _last_access(client, admin, mxc) == first
    assert await _last_access(client, admin, image) == first
    assert await _last_access(client, admin, other) is None

    # Within the hour, another download writes nothing; after it, it does.
    clock.advance(HOUR - 1)
    assert await _download(client, token, mxc) == 200
    await hs.media_access.flush()
    assert await _last_access(client, admin, mxc) == first
    clock.advance(1)
    assert await _download(client, token, mxc) == 200
    await hs.media_access.flush()
    assert await _last_access(client, admin, mxc) == first + HOUR

    # Unknown media is not recorded; the user's list orders by last access.
    assert await _download(client, token, "mxc://test/unknown") == 404
    await hs.media_access.flush()
    listed = await call(
        client, admin, "GET", f"/v1/users/{bob}/media?order_by=last_access_ts&dir=b"
    )
    assert [m["media_id"] for m in listed["media"]] == [_id(mxc), _id(image), _id(other)]
    assert listed["media"][0]["last_access_ts"] == first + HOUR


async def test_retention_deletes_media_not_fetched(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path, db_url, media={"retention": {"local_media_lifetime_ms": 2 * DAY}}
    )
    clock = FakeClock()
    async with serve(config, clock) as (hs, client):
        admin = await make_admin(hs, client)
        bob, token = await register(client, "bob")
        before = _stored_files(hs)
        fetched = await upload(client, token, os.urandom(100))
        image = await upload(client, token, make_image("PNG", 400, 300), "image/png")
        idle = await upload(client, token, os.urandom(100))
        avatar = await upload(client, token, os.urandom(100))
        room_avatar = await upload(client, token, os.urandom(100))
        protected = await upload(client, token, os.urandom(100))
        r = await client.put(
            f"{V3}/profile/{bob}/avatar_url",
            headers=auth_header(token),
            json={"avatar_url": avatar},
        )
        assert r.status_code == 200
        room = await create_room(client, token)
        # A per-room avatar, as a member event of another server's client may carry it.
        async with hs.db.write() as conn:
            await conn.execute(
                sa.update(room_memberships)
                .where(room_memberships.c.room_id == room, room_memberships.c.user_id == bob)
                .values(avatar_url=room_avatar)
            )
        await call(client, admin, "POST", f"/v1/media/protect/{_id(protected)}")

        clock.advance(DAY)
        assert await _download(client, token, fetched) == 200
        r = await client.get(
            f"{MEDIA}/thumbnail/{image[6:]}?width=64&height=64&method=scale",
            headers=auth_header(token),
        )
        assert r.status_code == 200
        await hs.media_access.flush()
        assert any(f.startswith("thumbnails/") for f in _stored_files(hs) - before)

        # Created two and a half days ago, never fetched: gone, with its file.
        clock.advance(DAY + DAY // 2)
        assert await hs.media_retention.run_once() == 1
        assert await _download(client, token, idle) == 404
        for mxc in (fetched, image, avatar, room_avatar, protected):
            assert await _download(client, token, mxc) == 200, mxc
        await hs.media_access.flush()

        # Two days after the last fetch: gone too, thumbnails with them. Avatars and
        # protected media stay however old they are.
        clock.advance(2 * DAY + 1)
        assert await hs.media_retention.run_once() == 2
        for mxc in (fetched, image):
            assert await _download(client, token, mxc) == 404
        left = _stored_files(hs) - before
        assert not any(f.startswith("thumbnails/") for f in left)
        assert len(left) == 3  # the avatars' and the protected media's content
        assert await hs.media_retention.run_once() == 0

        # One worker at a time: another waits for the lease to lapse or be released.
        other = MediaRetention(
            config.media.retention,
            hs.admin_media_store,
            JobLeaseStore(hs.db),
            hs.admin_media,
            clock,
        )
        assert await other.run_once() is None
        await hs.media_retention.release()
        assert await other.run_once() == 0
        assert await hs.media_retention.run_once() is None
        clock.advance(2 * config.media.retention.interval_ms)
        assert await hs.media_retention.run_once() == 0
        assert await other.run_once() is None


async def test_retention_is_off_by_default(client: httpx.AsyncClient, hs: Homeserver) -> None:
    assert not hs.media_retention.enabled
    assert not hs.has_background_job(hs.media_retention.run)


@pytest.mark.parametrize("lifetime", [0, HOUR, -1, "a day"])
def test_lifetimes_below_a_day_are_refused(tmp_path: Path, lifetime: object) -> None:
    for key in ("local_media_lifetime_ms", "remote_media_lifetime_ms"):
        with pytest.raises(ConfigError, match=key):
            make_config(tmp_path, "sqlite://", media={"retention": {key: lifetime}})


async def test_a_stopped_worker_gives_the_lease_up(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path, db_url, media={"retention": {"local_media_lifetime_ms": 2 * DAY}}
    )
    clock = FakeClock()
    async with serve(config, clock) as (hs, _):
        assert await hs.media_retention.run_once() == 0  # this worker holds the lease
        leases = JobLeaseStore(hs.db)
        assert not await leases.claim("media_retention", "another", clock.now_ms(), 1000)
    # Stopped: the job gave the lease up, another worker takes it at once.
    db = Database(db_url)
    try:
        assert await JobLeaseStore(db).claim("media_retention", "another", clock.now_ms(), 1)
    finally:
        await db.close()
