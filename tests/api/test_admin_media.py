"""The admin API on media, on both databases: lists, quarantine, protection, deletions that
take the stored files and thumbnails with them, statistics; rate limits of /media/create
and /publicRooms."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from tests.api.admin_helpers import call, make_admin, refused_to_non_admins
from tests.api.test_media import MEDIA, upload
from tests.conftest import make_config
from tests.helpers import auth_header, create_room, register, serve
from tests.unit.test_thumbnailer import make_image

V3 = "/_matrix/client/v3"


def _stored_files(hs: Homeserver) -> set[str]:
    root = hs.config.data_path / "media"
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


async def test_non_admins_are_refused(client: httpx.AsyncClient) -> None:
    bob, token = await register(client, "bob")
    room = await create_room(client, token)
    await refused_to_non_admins(
        client,
        token,
        [
            ("GET", f"/v1/users/{bob}/media", None),
            ("DELETE", f"/v1/users/{bob}/media", None),
            ("GET", f"/v1/room/{room}/media", None),
            ("POST", f"/v1/room/{room}/media/quarantine", None),
            ("POST", f"/v1/user/{bob}/media/quarantine", None),
            ("POST", "/v1/media/quarantine/test/abc", None),
            ("POST", "/v1/media/unquarantine/test/abc", None),
            ("POST", "/v1/media/protect/abc", None),
            ("POST", "/v1/media/unprotect/abc", None),
            ("DELETE", "/v1/media/test/abc", None),
            ("POST", "/v1/media/delete?before_ts=1", None),
            ("GET", "/v1/statistics/users/media", None),
        ],
    )


async def test_list_quarantine_and_protect(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    admin = await make_admin(hs, client)
    bob, token = await register(client, "bob")
    uris = []
    for n in range(3):
        clock.advance(1000)
        uris.append(await upload(client, token, os.urandom(100 + n), filename=f"f{n}.bin"))
    ids = [u.rsplit("/", 1)[1] for u in uris]
    listed = await call(client, admin, "GET", f"/v1/users/{bob}/media")
    assert [m["media_id"] for m in listed["media"]] == ids[::-1]  # newest first
    assert listed["total"] == 3 and "next_token" not in listed
    first = listed["media"][-1]
    assert first["upload_name"] == "f0.bin" and first["media_length"] == 100
    assert first["quarantined_by"] is None and first["safe_from_quarantine"] is False
    page = await call(client, admin, "GET", f"/v1/users/{bob}/media?order_by=media_length&limit=2")
    assert [m["media_length"] for m in page["media"]] == [100, 101] and page["next_token"] == 2
    # Quarantined media is served to nobody; lifted, it is served again.
    await call(client, admin, "POST", f"/v1/media/quarantine/test/{ids[0]}")
    r = await client.get(f"{MEDIA}/download/test/{ids[0]}", headers=auth_header(token))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    got = await call(client, admin, "GET", f"/v1/users/{bob}/media?order_by=media_id&dir=f")
    marked = {m["media_id"]: m["quarantined_by"] for m in got["media"]}
    assert marked[ids[0]] == "@root:test"
    await call(client, admin, "POST", f"/v1/media/unquarantine/test/{ids[0]}")
    r = await client.get(f"{MEDIA}/download/test/{ids[0]}", headers=auth_header(token))
    assert r.status_code == 200
    # Protected media is left out of a user's quarantine.
    await call(client, admin, "POST", f"/v1/media/protect/{ids[1]}")
    done = await call(client, admin, "POST", f"/v1/user/{bob}/media/quarantine")
    assert done == {"num_quarantined": 2}
    r = await client.get(f"{MEDIA}/download/test/{ids[1]}", headers=auth_header(token))
    assert r.status_code == 200
    await call(client, admin, "POST", f"/v1/media/unprotect/{ids[1]}")
    assert await call(client, admin, "POST", f"/v1/user/{bob}/media/quarantine") == {
        "num_quarantined": 1
    }
    # A room's media: what its events point at, local and remote.
    room = await create_room(client, token)
    fresh = await upload(client, token, b"in the room")
    for n, url in enumerate((fresh, "mxc://elsewhere.org/remoteid")):
        r = await client.put(
            f"{V3}/rooms/{room}/send/m.room.message/m{n}",
            headers=auth_header(token),
            json={"msgtype": "m.file", "body": "file", "url": url},
        )
        assert r.status_code == 200
    assert await call(client, admin, "GET", f"/v1/room/{room}/media") == {
        "local": [fresh],
        "remote": ["mxc://elsewhere.org/remoteid"],
    }
    assert await call(client, admin, "POST", f"/v1/room/{room}/media/quarantine") == {
        "num_quarantined": 2
    }
    r = await client.get(f"{MEDIA}/download/{fresh[6:]}", headers=auth_header(token))
    assert r.status_code == 404
    for method, path, status, errcode in (
        ("GET", f"/v1/users/{bob}/media?order_by=colour", 400, "M_INVALID_PARAM"),
        ("GET", f"/v1/users/{bob}/media?dir=up", 400, "M_INVALID_PARAM"),
        ("GET", f"/v1/users/{bob}/media?from=-1", 400, "M_INVALID_PARAM"),
        ("GET", "/v1/users/@bob:elsewhere/media", 400, "M_INVALID_PARAM"),
        ("GET", "/v1/room/!nowhere:test/media", 404, "M_NOT_FOUND"),
        ("GET", "/v1/room/nowhere/media", 400, "M_INVALID_PARAM"),
        ("POST", "/v1/room/!nowhere:test/media/quarantine", 404, "M_NOT_FOUND"),
        ("POST", "/v1/media/protect/unknown", 404, "M_NOT_FOUND"),
    ):
        await call(client, admin, method, path, None, status, errcode)


async def test_deletions_remove_files_and_thumbnails(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    admin = await make_admin(hs, client)
    bob, token = await register(client, "bob")
    before = _stored_files(hs)
    image = await upload(client, token, make_image("PNG", 800, 600), "image/png")
    r = await client.get(
        f"{MEDIA}/thumbnail/{image[6:]}?width=64&height=64&method=scale",
        headers=auth_header(token),
    )
    assert r.status_code == 200
    # The same bytes twice share their stored content: it stays while one uses it.
    shared = os.urandom(300)
    one, two = await upload(client, token, shared), await upload(client, token, shared)
    stored = _stored_files(hs) - before
    assert any(f.startswith("thumbnails/") for f in stored)
    assert await call(client, admin, "DELETE", f"/v1/media/test/{image.rsplit('/', 1)[1]}") == {
        "deleted_media": [image.rsplit("/", 1)[1]],
        "total": 1,
    }
    left = _stored_files(hs) - before
    assert not any(f.startswith("thumbnails/") for f in left)
    r = await client.get(f"{MEDIA}/download/{image[6:]}", headers=auth_header(token))
    assert r.status_code == 404
    await call(client, admin, "DELETE", f"/v1/media/test/{one.rsplit('/', 1)[1]}")
    assert _stored_files(hs) - before == left  # still used by the second upload
    r = await client.get(f"{MEDIA}/download/{two[6:]}", headers=auth_header(token))
    assert r.status_code == 200 and r.content == shared
    # By age and size, keeping avatars and protected media.
    clock.advance(10_000)
    avatar = await upload(client, token, os.urandom(2000))
    small = await upload(client, token, os.urandom(10))
    big = await upload(client, token, os.urandom(5000))
    kept = await upload(client, token, os.urandom(5000))
    r = await client.put(
        f"{V3}/profile/{bob}/avatar_url", headers=auth_header(token), json={"avatar_url": avatar}
    )
    assert r.status_code == 200
    await call(client, admin, "POST", f"/v1/media/protect/{kept.rsplit('/', 1)[1]}")
    clock.advance(1000)
    newer = await upload(client, token, os.urandom(5000))
    cutoff = clock.now_ms() - 500
    done = await call(client, admin, "POST", f"/v1/media/delete?before_ts={cutoff}&size_gt=100")
    assert sorted(done["deleted_media"]) == sorted([two.rsplit("/", 1)[1], big.rsplit("/", 1)[1]])
    remaining = {
        m["media_id"] for m in (await call(client, admin, "GET", f"/v1/users/{bob}/media"))["media"]
    }
    assert remaining == {u.rsplit("/", 1)[1] for u in (avatar, small, kept, newer)}
    everything = await call(
        client, admin, "POST", f"/v1/media/test/delete?before_ts={cutoff}&keep_profiles=false"
    )
    assert sorted(everything["deleted_media"]) == sorted(
        [avatar.rsplit("/", 1)[1], small.rsplit("/", 1)[1]]
    )
    # A user's media, all of it.
    gone = await call(client, admin, "DELETE", f"/v1/users/{bob}/media")
    assert gone["total"] == 2
    assert _stored_files(hs) == before
    for method, path, status, errcode in (
        ("DELETE", "/v1/media/elsewhere.org/abc", 400, "M_INVALID_PARAM"),
        ("DELETE", "/v1/media/test/unknown", 404, "M_NOT_FOUND"),
        ("POST", "/v1/media/delete", 400, "M_MISSING_PARAM"),
        ("POST", "/v1/media/delete?before_ts=x", 400, "M_INVALID_PARAM"),
        ("POST", "/v1/media/delete?before_ts=1&size_gt=-1", 400, "M_INVALID_PARAM"),
        ("POST", "/v1/media/delete?before_ts=1&keep_profiles=maybe", 400, "M_INVALID_PARAM"),
        ("POST", "/v1/media/elsewhere.org/delete?before_ts=1", 400, "M_INVALID_PARAM"),
    ):
        await call(client, admin, method, path, None, status, errcode)


async def test_media_statistics(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    _, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    await upload(client, alice_token, os.urandom(10))
    for _ in range(2):
        await upload(client, bob_token, os.urandom(100))
    stats = await call(client, admin, "GET", "/v1/statistics/users/media")
    assert stats["total"] == 2
    assert [(u["user_id"], u["media_count"], u["media_length"]) for u in stats["users"]] == [
        ("@alice:test", 1, 10),
        (bob, 2, 200),
    ]
    top = await call(
        client, admin, "GET", "/v1/statistics/users/media?order_by=media_length&dir=b&limit=1"
    )
    assert [u["user_id"] for u in top["users"]] == [bob] and top["next_token"] == 1
    found = await call(client, admin, "GET", "/v1/statistics/users/media?search_term=ali")
    assert [u["user_id"] for u in found["users"]] == ["@alice:test"]
    window = await call(
        client, admin, "GET", f"/v1/statistics/users/media?from_ts=0&until_ts={2**52}"
    )
    assert window["total"] == 2
    for query in (
        "order_by=size",
        "dir=x",
        "from=-1",
        "from_ts=x",
        "search_term=",
        "from_ts=10&until_ts=10",
        "until_ts=0",
    ):
        await call(
            client,
            admin,
            "GET",
            f"/v1/statistics/users/media?{query}",
            None,
            400,
            "M_INVALID_PARAM",
        )


async def test_rate_limits_of_media_create_and_public_rooms(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    config = make_config(
        tmp_path,
        db_url,
        rate_limits={
            "enabled": True,
            "media_create": {"per_second": 0.1, "burst": 2},
            "public_rooms": {"per_second": 0.1, "burst": 2},
        },
    )
    async with serve(config, clock) as (hs, client):
        _, token = await register(client, "bob")
        admin = await make_admin(hs, client)
        statuses = []
        for _ in range(3):
            r = await client.post("/_matrix/media/v1/create", headers=auth_header(token))
            statuses.append(r.status_code)
        assert statuses == [200, 200, 429]
        assert "retry_after_ms" in r.json()
        # Administrators are not limited; time refills the bucket.
        r = await client.post("/_matrix/media/v1/create", headers=auth_header(admin))
        assert r.status_code == 200
        clock.advance(10_000)
        r = await client.post("/_matrix/media/v1/create", headers=auth_header(token))
        assert r.status_code == 200
        for method, kwargs in (("GET", {}), ("POST", {"headers": auth_header(token), "json": {}})):
            got = [
                (await client.request(method, f"{V3}/publicRooms", **kwargs)).status_code
                for _ in range(3)
            ]
            assert got == [200, 200, 429], method


async def test_media_info_and_the_older_quarantine_path(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    admin = await make_admin(hs, client)
    bob, token = await register(client, "bob")
    data = os.urandom(50)
    uri = await upload(client, token, data, "text/plain", filename="notes.txt")
    media_id = uri.rsplit("/", 1)[1]
    await call(client, token, "GET", f"/v1/media/test/{media_id}", None, 403, "M_FORBIDDEN")
    info = (await call(client, admin, "GET", f"/v1/media/test/{media_id}"))["media_info"]
    assert info["media_origin"] == "test" and info["user_id"] == bob
    assert info["media_length"] == 50 and info["media_type"] == "text/plain"
    assert info["upload_name"] == "notes.txt" and info["quarantined_by"] is None
    await call(client, admin, "GET", "/v1/media/test/unknown", None, 404, "M_NOT_FOUND")
    await call(client, admin, "GET", "/v1/media/elsewhere.org/abc", None, 404, "M_NOT_FOUND")
    room = await create_room(client, token)
    r = await client.put(
        f"{V3}/rooms/{room}/send/m.room.message/1",
        headers=auth_header(token),
        json={"msgtype": "m.file", "body": "f", "url": uri},
    )
    assert r.status_code == 200
    await call(client, token, "POST", f"/v1/quarantine_media/{room}", None, 403, "M_FORBIDDEN")
    assert await call(client, admin, "POST", f"/v1/quarantine_media/{room}") == {
        "num_quarantined": 1
    }
    info = (await call(client, admin, "GET", f"/v1/media/test/{media_id}"))["media_info"]
    assert info["quarantined_by"] == "@root:test"
