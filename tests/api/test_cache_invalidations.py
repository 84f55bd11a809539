"""Caches that agree across workers (issue 21): two Homeservers on one PostgreSQL database,
each with its own in-memory bus, so that only the persisted invalidation stream tells one
what the other changed. A change on A is seen on B after B's next poll (or Redis wake-up)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from homeserver.app import Homeserver
from homeserver.caches import invalidations as inv_module
from homeserver.caches.invalidations import CacheInvalidations
from homeserver.core.clock import FakeClock
from homeserver.core.config import HomeserverConfig
from homeserver.core.streams import Stream
from homeserver.storage.cache_invalidations import CacheInvalidationStore
from homeserver.storage.database import Database
from homeserver.storage.schema import cache_invalidations
from tests.conftest import make_config, truncate
from tests.helpers import DEFAULT_PASSWORD, auth_header, register, serve
from tests.push_servers import until_async

CS = "/_matrix/client/v3"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def pg_url(pg_database: str) -> str:
    await truncate(pg_database)
    return pg_database


@asynccontextmanager
async def two_workers(
    tmp_path: Path, url: str, **extra: Any
) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient, Homeserver, httpx.AsyncClient]]:
    def config(name: str) -> HomeserverConfig:
        # Small pools: two workers share the test machine's PostgreSQL with other suites.
        return make_config(
            tmp_path / name,
            url,
            worker={"name": name},
            database={"url": url, "pool_size": 3},
            **extra,
        )

    async with serve(config("a")) as (a, client_a), serve(config("b")) as (b, client_b):
        assert a.bus is not b.bus  # nothing goes from one to the other but the database
        yield a, client_a, b, client_b


async def _whoami(client: httpx.AsyncClient, token: str) -> int:
    r = await client.get(f"{CS}/account/whoami", headers=auth_header(token))
    return r.status_code


async def _refused_within(client: httpx.AsyncClient, token: str, seconds: float) -> float:
    started = time.monotonic()

    async def refused() -> bool:
        return await _whoami(client, token) == 401

    await until_async(refused, timeout_s=seconds)
    return time.monotonic() - started


async def test_logout_on_one_worker_is_refused_on_the_other(tmp_path: Path, pg_url: str) -> None:
    async with two_workers(tmp_path, pg_url) as (a, client_a, b, client_b):
        assert a.cache_invalidations is not None and b.cache_invalidations is not None
        _, token = await register(client_a, "alice")
        assert await _whoami(client_b, token) == 200  # cached on B now
        r = await client_a.post(f"{CS}/logout", headers=auth_header(token))
        assert r.status_code == 200
        assert await _whoami(client_a, token) == 401  # A dropped its copy at once
        took = await _refused_within(client_b, token, 5)
        assert took <= b.cache_invalidations.poll_s + 1
        assert b.cache_invalidations.applied >= 1


async def test_deactivation_and_logout_all_reach_the_other_worker(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_workers(tmp_path, pg_url) as (_, client_a, __, client_b):
        _, alice = await register(client_a, "alice")
        r = await client_a.post(
            "/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": DEFAULT_PASSWORD,
            },
        )
        second = r.json()["access_token"]
        _, bob = await register(client_a, "bob")
        for token in (alice, second, bob):
            assert await _whoami(client_b, token) == 200
        r = await client_a.post(f"{CS}/logout/all", headers=auth_header(alice))
        assert r.status_code == 200
        await _refused_within(client_b, alice, 5)
        await _refused_within(client_b, second, 5)
        r = await client_a.post(
            f"{CS}/account/deactivate",
            headers=auth_header(bob),
            json={
                "auth": {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "bob"},
                    "password": DEFAULT_PASSWORD,
                }
            },
        )
        assert r.status_code == 200, r.text
        await _refused_within(client_b, bob, 5)


async def test_ignore_lists_push_rules_and_forgotten_rooms_agree(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_workers(tmp_path, pg_url) as (a, client_a, b, client_b):
        alice, alice_token = await register(client_a, "alice")
        bob, bob_token = await register(client_a, "bob")
        # B reads and keeps each of them.
        assert await b.ignore_lists.ignored_users(alice) == frozenset()
        before = (await b.push_rules.compiled_for([alice]))[alice]
        r = await client_a.post(
            f"{CS}/createRoom", headers=auth_header(bob_token), json={"preset": "public_chat"}
        )
        room_id = r.json()["room_id"]
        r = await client_a.post(f"{CS}/join/{room_id}", headers=auth_header(alice_token))
        assert r.status_code == 200
        r = await client_a.post(f"{CS}/rooms/{room_id}/leave", headers=auth_header(alice_token))
        assert r.status_code == 200
        upto = (await b.db.current_positions())[Stream.EVENTS]
        kept = await b.room_store.get_sync_memberships(alice, upto)
        assert [m.forgotten for m in kept if m.room_id == room_id] == [False]

        r = await client_a.put(
            f"{CS}/user/{alice}/account_data/m.ignored_user_list",
            headers=auth_header(alice_token),
            json={"ignored_users": {bob: {}}},
        )
        assert r.status_code == 200
        r = await client_a.put(
            f"{CS}/pushrules/global/override/quiet",
            headers=auth_header(alice_token),
            json={"actions": [], "conditions": []},
        )
        assert r.status_code == 200, r.text
        r = await client_a.post(f"{CS}/rooms/{room_id}/forget", headers=auth_header(alice_token))
        assert r.status_code == 200

        async def agreed() -> bool:
            ignored = await b.ignore_lists.ignored_users(alice)
            rules = (await b.push_rules.compiled_for([alice]))[alice]
            kept = await b.room_store.get_sync_memberships(alice, upto)
            forgotten = [m.forgotten for m in kept if m.room_id == room_id]
            return ignored == {bob} and rules is not before and forgotten in ([True], [])

        await until_async(agreed, timeout_s=5)


async def test_a_read_that_overlaps_a_drop_is_not_kept(tmp_path: Path, pg_url: str) -> None:
    """A worker that read an ignore list while a drop of it arrived does not keep what it
    read (it may predate the change)."""
    async with two_workers(tmp_path, pg_url) as (a, client_a, b, _):
        alice, alice_token = await register(client_a, "alice")
        bob, _ = await register(client_a, "bob")
        store = b.ignore_lists._store
        real = store.get_global_for_users
        reading, go_on = asyncio.Event(), asyncio.Event()

        async def slow(*args: Any) -> Any:
            found = await real(*args)  # the old list
            reading.set()
            await go_on.wait()
            return found

        store.get_global_for_users = slow  # type: ignore[method-assign]
        try:
            read = asyncio.create_task(b.ignore_lists.ignored_users(alice))
            await reading.wait()
            r = await client_a.put(
                f"{CS}/user/{alice}/account_data/m.ignored_user_list",
                headers=auth_header(alice_token),
                json={"ignored_users": {bob: {}}},
            )
            assert r.status_code == 200
            assert b.cache_invalidations is not None
            applied = b.cache_invalidations.applied
            await b.cache_invalidations.poll_once()
            assert b.cache_invalidations.applied > applied
            go_on.set()
            assert await read == frozenset()  # what it read, answered once
        finally:
            store.get_global_for_users = real  # type: ignore[method-assign]
        assert await b.ignore_lists.ignored_users(alice) == {bob}  # not kept: read again


async def test_positions_that_commit_late_are_not_skipped(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(pg_url, pool_size=1)
    try:
        store = CacheInvalidationStore(db)
        invalidations = CacheInvalidations(store, FakeClock(), poll_s=60)
        dropped: list[str] = []
        invalidations.register("c", dropped.append, dropped.clear)
        await invalidations.poll_once()  # the cursor starts at the stream's end

        async def row(position: int, key: str) -> None:
            async with db.write() as conn:
                await conn.execute(
                    sa.insert(cache_invalidations).values(
                        position=position, cache="c", key=key, ts=0
                    )
                )

        await row(1, "one")
        await row(3, "three")  # 2 is taken, not committed yet
        await invalidations.poll_once()
        assert dropped == ["one", "three"]
        await row(2, "two")
        await invalidations.poll_once()
        assert dropped == ["one", "three", "two"]
        await row(5, "five")  # 4 never commits (rolled back)
        await invalidations.poll_once()
        await invalidations.poll_once()
        assert dropped == ["one", "three", "two", "five"]  # each once
        monkeypatch.setattr(inv_module, "GAP_TIMEOUT_S", 0.0)
        await invalidations.poll_once()  # 4 given up: the cursor moves past it
        assert invalidations._cursor == 5 and not invalidations._applied_above
        assert await store.prune(1) == 4
        assert await store.since(0, 10) == []
    finally:
        await db.close()


async def test_redis_wakes_the_other_worker_before_its_poll(tmp_path: Path, pg_url: str) -> None:
    server_name = f"t{secrets.token_hex(4)}"
    async with two_workers(tmp_path, pg_url, redis={"url": REDIS_URL}, server_name=server_name) as (
        _,
        client_a,
        b,
        client_b,
    ):
        assert b.cache_invalidations is not None
        b.cache_invalidations.poll_s = 30.0  # from its next wait on: only a wake-up is quick
        _, token = await register(client_a, "alice")
        assert await _whoami(client_b, token) == 200
        await asyncio.sleep(1.5)  # B's current wait (the old poll) is over
        r = await client_a.post(f"{CS}/logout", headers=auth_header(token))
        assert r.status_code == 200
        assert await _refused_within(client_b, token, 3) < 3
