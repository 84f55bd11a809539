"""A small WebSocket sync client (docs/websocket.md): prints what arrives, sends what you type.

    python examples/ws_client.py --server http://127.0.0.1:8008 --user alice --password ...
    python examples/ws_client.py --server https://example.org --token mat_... --room '!abc'

Lines you type go to the current room as m.text messages; ``/room !id`` switches rooms,
``/quit`` leaves. The client reconnects after a disconnect, resuming from its last
``next_batch``. Needs only the ``websockets`` package (the homeserver's test extra has it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
import urllib.request
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

PATH = "/_matrix/client/unstable/org.homeserver.ws/v1/sync"
GIVE_UP = {4000, 4001}  # bad parameters or credentials: reconnecting would not help


def login(server: str, user: str, password: str) -> str:
    body = json.dumps(
        {
            "type": "m.login.password",
            "password": password,
            "identifier": {"type": "m.id.user", "user": user},
        }
    ).encode()
    request = urllib.request.Request(
        f"{server}/_matrix/client/v3/login", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        return str(json.load(response)["access_token"])


class Client:
    def __init__(self, server: str, token: str, room_id: str | None) -> None:
        self.url = server.replace("http", "ws", 1).rstrip("/") + PATH
        self.token = token
        self.room_id = room_id
        self.since: str | None = None
        self.ids = itertools.count()

    async def run(self) -> None:
        lines: asyncio.Queue[str] = asyncio.Queue()
        # Unix: stdin is read as lines arrive; at its end, leave.
        asyncio.get_running_loop().add_reader(
            sys.stdin, lambda: lines.put_nowait(sys.stdin.readline() or "/quit")
        )
        delay = 1.0
        while True:
            query = f"?since={self.since}" if self.since else ""
            try:
                async with connect(
                    self.url + query,
                    max_size=None,
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                ) as ws:
                    delay = 1.0
                    await self._session(ws, lines)
                    return  # /quit
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else 1006
                print(f"* disconnected ({code} {e.rcvd.reason if e.rcvd else ''})")
                if code in GIVE_UP:
                    return
            except (OSError, InvalidStatus) as e:
                print(f"* cannot connect: {e}")
            # Back off, with jitter, so that a restarted server is not hit all at once.
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 60)

    async def _session(self, ws: ClientConnection, lines: asyncio.Queue[str]) -> None:
        typed = asyncio.create_task(lines.get())
        received = asyncio.create_task(ws.recv())
        try:
            while True:
                done, _ = await asyncio.wait({typed, received}, return_when=asyncio.FIRST_COMPLETED)
                if received in done:
                    await self._on_frame(ws, json.loads(received.result()))
                    received = asyncio.create_task(ws.recv())
                if typed in done:
                    if not await self._on_line(ws, typed.result().strip()):
                        return
                    typed = asyncio.create_task(lines.get())
        finally:
            typed.cancel()
            received.cancel()

    async def _on_frame(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ping":
            await ws.send(json.dumps({"type": "pong"}))
        elif kind == "ready":
            print(f"* connected as {frame['user_id']} ({frame['device_id']})")
        elif kind == "sync":
            for room_id, room in frame.get("rooms", {}).get("join", {}).items():
                self.room_id = self.room_id or room_id
                for event in room["timeline"]["events"]:
                    body = event["content"].get("body", event["type"])
                    print(f"[{room_id[:12]}] {event['sender']}: {body}")
            for room_id in frame.get("rooms", {}).get("invite", {}):
                print(f"* invited to {room_id}")
            # Only now is this batch handled: resume from here after a disconnect.
            self.since = frame["next_batch"]
        elif "error" in frame:
            print(f"* error: {frame['error']['errcode']}: {frame['error']['error']}")

    async def _on_line(self, ws: ClientConnection, line: str) -> bool:
        if line == "/quit":
            return False
        if line.startswith("/room "):
            self.room_id = line.split(" ", 1)[1].strip()
            print(f"* now talking in {self.room_id}")
        elif line and self.room_id is None:
            print("* no room yet: /room !id")
        elif line:
            await ws.send(
                json.dumps(
                    {
                        "id": str(next(self.ids)),
                        "method": "send",
                        "params": {
                            "room_id": self.room_id,
                            "event_type": "m.room.message",
                            # One txn_id per message, so that a retry cannot post it twice.
                            "txn_id": f"ws{time.time_ns()}",
                            "content": {"msgtype": "m.text", "body": line},
                        },
                    }
                )
            )
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8008")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--token", help="an access token, instead of --user and --password")
    parser.add_argument("--room", help="the room to talk in (default: the first one seen)")
    args = parser.parse_args()
    if args.token is None and (args.user is None or args.password is None):
        parser.error("give --token, or --user and --password")
    token = args.token or login(args.server.rstrip("/"), args.user, args.password)
    try:
        asyncio.run(Client(args.server, token, args.room).run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
