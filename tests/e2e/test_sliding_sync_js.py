"""A real sliding sync client: matrix-js-sdk (under Node) lists rooms, reads their
timelines, paginates back and receives a message live over simplified sliding sync
(MSC4186), against the server under uvicorn.

The client is installed from the npm registry at the versions of ``js/package-lock.json``
into ``~/.cache/homeserver-tests/`` on first use (``npm ci``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServerProcess

JS = Path(__file__).parent / "js"
PASSWORD = "correct horse battery"
NPM_TIMEOUT_S = 300
STEP_TIMEOUT_S = 40


def _installed_client() -> Path:
    """A directory with the client script beside its node_modules."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the matrix-js-sdk client")
    lock = (JS / "package-lock.json").read_bytes()
    where = (
        Path.home()
        / ".cache"
        / "homeserver-tests"
        / ("matrix-js-sdk-" + hashlib.sha256(lock).hexdigest()[:16])
    )
    if not (where / "node_modules" / "matrix-js-sdk").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(JS / name, where / name)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--engine-strict=false"],
            cwd=where,
            check=True,
            capture_output=True,
            timeout=NPM_TIMEOUT_S,
        )
    shutil.copy(JS / "sliding_sync_client.mjs", where / "sliding_sync_client.mjs")
    return where


async def _register(http: httpx.AsyncClient, name: str) -> str:
    r = await http.post(
        "/_matrix/client/v3/register",
        json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def _call(
    http: httpx.AsyncClient, method: str, path: str, token: str, body: dict[str, Any]
) -> dict[str, Any]:
    r = await http.request(
        method,
        f"/_matrix/client/v3{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def _step(proc: asyncio.subprocess.Process, name: str) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), STEP_TIMEOUT_S)
        if not line:
            assert proc.stderr is not None
            error = (await proc.stderr.read()).decode(errors="replace")
            raise AssertionError(f"the client stopped before {name!r}: {error[-3000:]}")
        try:
            data: dict[str, Any] = json.loads(line)
        except ValueError:
            continue  # the SDK's own logging
        if data.get("step") == name:
            return data


async def test_matrix_js_sdk_lists_rooms_paginates_and_receives_live(
    server: ServerProcess,
) -> None:
    where = _installed_client()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        alice = await _register(http, "alice")
        bob = await _register(http, "bob")
        rooms = []
        for i in range(3):
            room = await _call(
                http,
                "POST",
                "/createRoom",
                alice,
                {"name": f"Room {i}", "invite": ["@bob:localhost"]},
            )
            rooms.append(room["room_id"])
            await _call(http, "POST", f"/join/{room['room_id']}", bob, {})
        # The oldest room gets a longer history than the timeline limit of 2.
        for n in range(6):
            await _call(
                http,
                "PUT",
                f"/rooms/{rooms[0]}/send/m.room.message/h{n}",
                alice,
                {"msgtype": "m.text", "body": f"history {n}"},
            )
        for i in (1, 2):
            await _call(
                http,
                "PUT",
                f"/rooms/{rooms[i]}/send/m.room.message/r{i}",
                alice,
                {"msgtype": "m.text", "body": f"hello {i}"},
            )

        proc = await asyncio.create_subprocess_exec(
            "node",
            str(where / "sliding_sync_client.mjs"),
            server.base_url,
            "alice",
            PASSWORD,
            rooms[2],
            "live from bob",
            rooms[0],
            cwd=where,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert (await _step(proc, "login"))["user_id"] == "@alice:localhost"
            listed = await _step(proc, "listed")
            # Newest activity first: room 0 had its history before rooms 1 and 2 spoke.
            assert listed["count"] == 3
            assert listed["room_ids"] == [rooms[2], rooms[1], rooms[0]]
            assert listed["rooms"][rooms[1]] == {"name": "Room 1", "timeline": ["hello 1"]}
            assert listed["rooms"][rooms[0]]["timeline"] == ["history 4", "history 5"]
            paginated = await _step(proc, "paginated")
            assert paginated["timeline"] == [f"history {n}" for n in range(6)]
            await _step(proc, "ready")
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            await _call(
                http,
                "PUT",
                f"/rooms/{rooms[0]}/send/m.room.message/live",
                bob,
                {"msgtype": "m.text", "body": "not this one"},
            )
            sent = await _call(
                http,
                "PUT",
                f"/rooms/{rooms[2]}/send/m.room.message/live",
                bob,
                {"msgtype": "m.text", "body": "live from bob"},
            )
            live = await _step(proc, "live")
            assert live["event_id"] == sent["event_id"]
            assert live["sender"] == "@bob:localhost"
            assert await asyncio.wait_for(proc.wait(), STEP_TIMEOUT_S) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
