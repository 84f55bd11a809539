"""Fixtures of the federation API tests: a remote server whose keys the homeserver holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.federation.keyring import parse_key_response
from homeserver.storage.server_keys import ServerKeyStore
from tests.federation_helpers import DAY_MS, FakeRemote, served_offline


@pytest.fixture
def remote() -> FakeRemote:
    return FakeRemote("remote.test")


@pytest.fixture
async def fed(
    tmp_path: Path, db_url: str, clock: FakeClock, remote: FakeRemote
) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient]]:
    async for hs, client in served_offline(tmp_path, db_url, clock):
        keys = parse_key_response(
            remote.key_response(clock.now_ms() + DAY_MS),
            "remote.test",
            "remote.test",
            clock.now_ms(),
        )
        await ServerKeyStore(hs.db).store_keys(keys)
        yield hs, client
