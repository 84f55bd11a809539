"""Media retention on S3 (a real SeaweedFS): media past its lifetime leaves the bucket,
its thumbnails too, while media fetched since stays."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from homeserver.core.clock import FakeClock
from homeserver.core.config import MediaStorageS3Config
from media_repo.s3 import S3Backend
from media_repo.service import content_key
from tests.api.test_media import MEDIA, upload
from tests.conftest import make_config
from tests.e2e.test_media_s3 import SeaweedFS, seaweed  # noqa: F401 - the fixture
from tests.helpers import auth_header, register, serve
from tests.unit.test_thumbnailer import make_image

DAY = 24 * 3600 * 1000


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_retention_empties_the_bucket(
    seaweed: SeaweedFS,  # noqa: F811
    tmp_path: Path,
    db_url: str,
) -> None:
    storage = seaweed.storage_config("retention/")
    config = make_config(
        tmp_path,
        db_url,
        media={"storage": storage, "retention": {"local_media_lifetime_ms": DAY}},
    )
    backend = S3Backend(MediaStorageS3Config.model_validate(storage["s3"]))
    clock = FakeClock()
    try:
        async with serve(config, clock) as (hs, client):
            _, token = await register(client, "alice")
            old_image = make_image("PNG", 640, 480)
            kept_image = make_image("PNG", 320, 200)
            old = await upload(client, token, old_image, "image/png")
            kept = await upload(client, token, kept_image, "image/png")
            for mxc in (old, kept):
                r = await client.get(
                    f"{MEDIA}/thumbnail/{mxc[6:]}?width=32&height=32&method=crop",
                    headers=auth_header(token),
                )
                assert r.status_code == 200
            await hs.media_access.flush()
            s3 = await backend._s3()
            old_sha = hashlib.sha256(old_image).hexdigest()
            kept_sha = hashlib.sha256(kept_image).hexdigest()

            async def thumbnails() -> dict[str, int]:
                listed = await s3.list_objects_v2(Bucket="media", Prefix="retention/thumbnails/")
                keys = [o["Key"] for o in listed.get("Contents", [])]
                return {sha: sum(sha in k for k in keys) for sha in (old_sha, kept_sha)}

            before = await thumbnails()
            assert before[old_sha] >= 1 and before[kept_sha] >= 1

            clock.advance(DAY // 2)
            r = await client.get(f"{MEDIA}/download/{kept[6:]}", headers=auth_header(token))
            assert r.status_code == 200
            await hs.media_access.flush()
            clock.advance(DAY // 2 + 1)
            assert await hs.media_retention.run_once() == 1

            assert not await backend.exists(content_key(old_sha))
            assert await backend.exists(content_key(kept_sha))
            assert await thumbnails() == {old_sha: 0, kept_sha: before[kept_sha]}
            r = await client.get(f"{MEDIA}/download/{old[6:]}", headers=auth_header(token))
            assert r.status_code == 404
    finally:
        await backend.close()
