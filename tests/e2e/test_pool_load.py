"""PostgreSQL under a crowd: many members long-polling one room while one of them sends,
with registrations and initial syncs at the same time, on the default pool and on a pool of
2. No request may get a 5xx (pool exhaustion used to be a 500 after 30 s, issue 25), and
every member receives every event. Then SIGTERM under the same load: the server exits
within its shut-down time, long-polls get a normal answer, and every acknowledged event is
in the database after a restart.

``HS_TEST_LOAD_MEMBERS`` sets the crowd (200 by default: 20 times the default pool, 100
times the pool of 2, and short beside the rest of CI, which runs beside it on the other
core). 1 000 is the issue's figure: run it with ``HS_TEST_LOAD_MEMBERS=1000``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
import yaml

from bench.client import _Connection, timeline_event_ids
from tests.conftest import in_thread, truncate
from tests.e2e.conftest import ServerProcess

MEMBERS = int(os.environ.get("HS_TEST_LOAD_MEMBERS", "200"))
MESSAGES = 50
REGISTRATIONS = 50
INITIAL_SYNCS = 50
SETUP_CONCURRENCY = 16
# Generous: on a pool of 2, with the machine's cores shared, a sync from scratch of a
# crowded room waits long behind the crowd's reads; slow is allowed, failing is not.
DELIVERY_TIMEOUT_S = 300
SHUTDOWN_TIMEOUT_MS = 3000
# The process may take this long past its shut-down time (interpreter exit, the
# watchdog's grace) before the test calls it stuck.
EXIT_MARGIN_S = 3.5
# A sync that only learns a position: the timeline and the member list left out.
# Long-polls: a timeline long enough for every event sent (a limited one would leave a gap
# for the client to fill from /messages).
POLL_FILTER = orjson.dumps({"room": {"timeline": {"limit": 2 * MESSAGES}}}).decode()
PRIME_FILTER = orjson.dumps(
    {"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}}
).decode()


class Client:
    """One user's requests on one keep-alive connection of their own (bench's lean
    connection): hundreds of them in this one process cost little."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self._port = port
        self.token = token
        self._conn: _Connection | None = None

    async def call(
        self, method: str, path: str, body: Any = None, timeout_s: float = 300
    ) -> tuple[int, Any]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self._port}\r\n"
        if self.token is not None:
            head += f"Authorization: Bearer {self.token}\r\n"
        raw_body = b"" if body is None else orjson.dumps(body)
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(raw_body)}\r\n"
        data = (head + "\r\n").encode() + raw_body
        reused = self._conn is not None and not self._conn.closed
        while True:
            if self._conn is None or self._conn.closed:
                _, self._conn = await asyncio.get_running_loop().create_connection(
                    _Connection, "127.0.0.1", self._port
                )
            try:
                status, raw, _ = await self._conn.request(data, timeout_s)
                break
            except ConnectionError:
                # A kept connection the server closed meanwhile (idle past its keep-alive
                # time): once more on a new one.
                self.close()
                if not reused:
                    raise
                reused = False
            except BaseException:
                self.close()
                raise
        return status, orjson.loads(raw) if raw else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Tally:
    """Every status the server answered, and the 5xx among them with their bodies."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.server_errors: list[tuple[str, int, Any]] = []

    def count(self, what: str, status: int, body: Any) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            self.server_errors.append((what, status, body))


async def register(port: int, localpart: str, tally: Tally) -> Client:
    client = Client(port)
    body = {"username": localpart, "password": "load-test-pw", "auth": {"type": "m.login.dummy"}}
    while True:
        status, answer = await client.call("POST", "/_matrix/client/v3/register", body)
        tally.count("register", status, answer)
        if status == 200:
            client.token = answer["access_token"]
            return client
        assert status == 503, answer  # backpressure: retried, and counted as a 5xx


async def checked(
    client: Client, tally: Tally, what: str, method: str, path: str, body: Any = None
) -> Any:
    status, answer = await client.call(method, path, body)
    tally.count(what, status, answer)
    assert status == 200, (what, status, answer)
    return answer


class Member:
    """A long-poll loop: ``/sync?since=…&timeout=30000``, the event IDs it received."""

    def __init__(self, client: Client, tally: Tally) -> None:
        self.client = client
        self.tally = tally
        self.since = ""
        self.received: set[str] = set()
        self.after_signal: list[int] = []  # statuses answered once SIGTERM was sent
        self.signalled = False
        self.task: asyncio.Task[None] | None = None

    async def prime(self) -> None:
        query = urlencode({"filter": PRIME_FILTER})
        answer = await checked(
            self.client, self.tally, "prime", "GET", f"/_matrix/client/v3/sync?{query}"
        )
        self.since = answer["next_batch"]

    async def run(self) -> None:
        while True:
            query = urlencode({"timeout": 30000, "since": self.since, "filter": POLL_FILTER})
            try:
                status, answer = await self.client.call("GET", f"/_matrix/client/v3/sync?{query}")
            except (ConnectionError, OSError, TimeoutError):
                if self.signalled:
                    return  # the server is gone
                raise
            self.tally.count("long-poll", status, answer)
            if self.signalled:
                self.after_signal.append(status)
            if status != 200:
                await asyncio.sleep(0.5)
                continue
            self.since = answer["next_batch"]
            self.received.update(timeline_event_ids(answer))
            for room in answer.get("rooms", {}).get("join", {}).values():
                assert not room["timeline"]["limited"], "a gap in the timeline"


def start_server(tmp_path: Path, database_url: str) -> ServerProcess:
    in_thread(lambda: truncate(database_url))
    # The default pool: its size and its timeout. (A 503 under this load would be the
    # designed answer to overload; on a machine shared with other jobs it can come, and then
    # fails the test's "no 5xx", which is the criterion.)
    proc = ServerProcess(tmp_path, database_url, database={"url": database_url})
    start_server_again(proc)
    return proc


def start_server_again(proc: ServerProcess) -> None:
    os.environ["HOMESERVER_STRICT_POOL"] = "1"  # a connection held across a wait: a 500
    try:
        proc.start()
    finally:
        del os.environ["HOMESERVER_STRICT_POOL"]


class Crowd:
    """The room, its members long-polling, and the load around them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tally = Tally()
        self.members: list[Member] = []
        self.sender: Client | None = None
        self.room_id = ""
        self.acknowledged: list[str] = []

    async def set_up(self, members: int) -> None:
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        self.sender = await register(self.port, "sender", self.tally)
        created = await checked(
            self.sender,
            self.tally,
            "createRoom",
            "POST",
            "/_matrix/client/v3/createRoom",
            {"preset": "public_chat"},
        )
        self.room_id = created["room_id"]
        room = quote(self.room_id, safe="")

        async def member(i: int) -> Member:
            async with gate:
                client = await register(self.port, f"member{i}", self.tally)
                await checked(
                    client, self.tally, "join", "POST", f"/_matrix/client/v3/rooms/{room}/join", {}
                )
                return Member(client, self.tally)

        async def prime(m: Member) -> None:
            async with gate:
                await m.prime()

        self.members = list(await asyncio.gather(*(member(i) for i in range(members))))
        # Every member from after the last join: the crowd's own arrival is not the load.
        await asyncio.gather(*(prime(m) for m in self.members))
        for m in self.members:
            m.task = asyncio.create_task(m.run())

    async def send_all(self, count: int, phase: str) -> None:
        assert self.sender is not None
        room = quote(self.room_id, safe="")
        for i in range(count):
            status, answer = await self.sender.call(
                "PUT",
                f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{phase}{i}",
                {"msgtype": "m.text", "body": f"message {i}"},
            )
            self.tally.count("send", status, answer)
            if status == 200:
                self.acknowledged.append(answer["event_id"])

    async def registrations(self, count: int, phase: str) -> None:
        await asyncio.gather(
            *(register(self.port, f"{phase}-newcomer{i}", self.tally) for i in range(count))
        )

    async def initial_syncs(self, count: int) -> None:
        async def one(m: Member) -> None:
            fresh = Client(self.port, m.client.token)  # its own connection, as a second device
            try:
                await checked(fresh, self.tally, "initial sync", "GET", "/_matrix/client/v3/sync")
            finally:
                fresh.close()

        await asyncio.gather(*(one(m) for m in self.members[:count]))

    async def everyone_received(self, timeout_s: float) -> list[int]:
        """Waits until every member has every acknowledged event; how many each missed."""
        wanted = set(self.acknowledged)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(wanted <= m.received for m in self.members):
                break
            for m in self.members:
                if m.task is not None and m.task.done():
                    m.task.result()  # a listener that failed raises here
            await asyncio.sleep(0.2)
        return [len(wanted - m.received) for m in self.members]

    async def load(self, phase: str) -> float:
        """The load of a phase: events sent while accounts register and members sync from
        scratch; how long until every member had every event."""
        self.acknowledged = []
        started = time.monotonic()
        await asyncio.gather(
            self.send_all(MESSAGES, phase),
            self.registrations(REGISTRATIONS, phase),
            self.initial_syncs(INITIAL_SYNCS),
        )
        missed = await self.everyone_received(DELIVERY_TIMEOUT_S)
        elapsed = time.monotonic() - started
        print(f"{MEMBERS} members, {phase}: {elapsed:.1f} s, {self.tally.statuses}")
        assert self.tally.server_errors == []
        assert len(self.acknowledged) == MESSAGES
        assert max(missed) == 0, f"{sum(1 for n in missed if n)} members missed events"
        return elapsed

    async def pause(self) -> None:
        """The long-polls stop (their tokens are kept), for a restart."""
        for m in self.members:
            if m.task is not None:
                m.task.cancel()
        await asyncio.gather(*(m.task for m in self.members if m.task), return_exceptions=True)
        for m in self.members:
            m.client.close()
            m.task = None

    def resume(self) -> None:
        for m in self.members:
            m.task = asyncio.create_task(m.run())

    async def stop(self) -> None:
        for m in self.members:
            if m.task is not None:
                m.task.cancel()
        await asyncio.gather(*(m.task for m in self.members if m.task), return_exceptions=True)
        for m in self.members:
            m.client.close()
        if self.sender is not None:
            self.sender.close()


def reconfigure(server: ServerProcess, **sections: dict[str, object]) -> None:
    """Updates sections of the server's config file (read at its next start)."""
    data = yaml.safe_load(server.config_path.read_text())
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    server.config_path.write_text(yaml.safe_dump(data))


@pytest.mark.timeout(1200)  # one set-up for three phases: longer than a test's default
async def test_a_crowd_on_the_default_pool_on_a_pool_of_2_and_at_sigterm(
    pg_database: str, tmp_path: Path
) -> None:
    """One crowd (its set-up is most of the time), three phases on the same database: the
    default pool; a restart on a pool of 2; SIGTERM under the same load on the pool of 2,
    then a restart that has every event acknowledged in any phase."""
    server = start_server(tmp_path, pg_database)
    crowd = Crowd(server.port)
    acknowledged: list[str] = []
    try:
        await crowd.set_up(MEMBERS)
        await crowd.load("default-pool")
        acknowledged += crowd.acknowledged

        await crowd.pause()
        server.stop()
        reconfigure(
            server,
            database={"pool_size": 2},
            listen={"shutdown_timeout_ms": SHUTDOWN_TIMEOUT_MS},
        )
        start_server_again(server)
        crowd.resume()
        await crowd.load("pool-of-2")
        acknowledged += crowd.acknowledged

        crowd.acknowledged = []
        load = asyncio.gather(
            crowd.send_all(10_000, "sigterm"),  # until the server goes
            crowd.registrations(REGISTRATIONS, "sigterm"),
            crowd.initial_syncs(INITIAL_SYNCS),
            return_exceptions=True,
        )
        while len(crowd.acknowledged) < 10:
            await asyncio.sleep(0.05)
        for m in crowd.members:
            m.signalled = True
        signalled = time.monotonic()
        exit_code = server.terminate_and_wait(SHUTDOWN_TIMEOUT_MS / 1000 + EXIT_MARGIN_S + 5)
        took = time.monotonic() - signalled
        await asyncio.wait_for(load, 30)
        await asyncio.wait_for(
            asyncio.gather(*(m.task for m in crowd.members if m.task), return_exceptions=True), 30
        )
        acknowledged += crowd.acknowledged
    finally:
        await crowd.stop()
        server.stop()
    print(f"exit after SIGTERM: {took:.2f} s (code {exit_code})")
    assert took < SHUTDOWN_TIMEOUT_MS / 1000 + EXIT_MARGIN_S
    # At the signal, requests waiting for a database connection may be refused (503); none
    # fails otherwise.
    assert all(status == 503 for _, status, _ in crowd.tally.server_errors), (
        crowd.tally.server_errors[:5]
    )
    # The long-polls waiting at the signal got a normal answer.
    answered = [m.after_signal for m in crowd.members if m.after_signal]
    assert len(answered) >= len(crowd.members) * 0.9
    firsts = [statuses[0] for statuses in answered]
    assert firsts.count(200) == len(firsts), firsts

    # Every acknowledged event is there after a restart.
    start_server_again(server)
    try:
        reader = Client(server.port, crowd.members[0].client.token)
        room = quote(crowd.room_id, safe="")
        for event_id in acknowledged:
            status, answer = await reader.call(
                "GET", f"/_matrix/client/v3/rooms/{room}/event/{quote(event_id, safe='')}"
            )
            assert status == 200, (event_id, answer)
        reader.close()
    finally:
        server.stop()
