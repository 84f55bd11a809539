"""Rooms of old versions through a real server (uvicorn): a v1 room's events carry their own
IDs, and a v3 event ID holding `/` is reachable as `%2F` (homeserver/web/escaped_slash.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.conftest import ServerProcess

V3 = "/_matrix/client/v3"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("room_versions")), None)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _register(http: httpx.Client, name: str) -> dict[str, str]:
    body = {
        "username": name,
        "password": "correct horse battery",
        "auth": {"type": "m.login.dummy"},
    }
    r = http.post(f"{V3}/register", json=body)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_v1_and_v3_rooms_over_http(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        auth = _register(http, "alice")
        r = http.post(f"{V3}/createRoom", json={"room_version": "1"}, headers=auth)
        v1_room = r.json()["room_id"]
        r = http.put(
            f"{V3}/rooms/{v1_room}/send/m.room.message/a", json={"body": "x"}, headers=auth
        )
        event_id = r.json()["event_id"]
        assert event_id.startswith("$") and event_id.endswith(":localhost")  # v1: $opaque:server
        r = http.get(f"{V3}/rooms/{v1_room}/event/{quote(event_id, safe='')}", headers=auth)
        assert r.status_code == 200 and r.json()["content"] == {"body": "x"}

        r = http.post(f"{V3}/createRoom", json={"room_version": "3"}, headers=auth)
        v3_room = r.json()["room_id"]
        for n in range(200):
            r = http.put(
                f"{V3}/rooms/{v3_room}/send/m.room.message/t{n}",
                json={"body": str(n)},
                headers=auth,
            )
            event_id = r.json()["event_id"]
            if "/" in event_id:
                break
        else:
            pytest.fail("no ID with a slash in 200 events")
        encoded = quote(event_id, safe="")
        r = http.get(f"{V3}/rooms/{v3_room}/event/{encoded}", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["event_id"] == event_id
        r = http.put(f"{V3}/rooms/{v3_room}/redact/{encoded}/r", json={}, headers=auth)
        assert r.status_code == 200, r.text
        r = http.get(f"{V3}/rooms/{v3_room}/event/{encoded}", headers=auth)
        assert r.json()["content"] == {}
