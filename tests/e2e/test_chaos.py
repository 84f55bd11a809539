"""The chaos test of issue 21: three workers (``homeserver run --workers 3``) on PostgreSQL
and a Redis of the test's own, behind HAProxy. Senders send through HAProxy with
transaction IDs and retry whatever fails, as real clients do; two people follow the room
with long-polls and a third over the WebSocket transport. Meanwhile: kill -9 a worker (the
supervisor starts it again), kill -9 the worker holding the singletons, stop Redis for 5 s
and start it again. Then every acknowledged send is in ``/messages`` exactly once, retries
made no duplicates, the three clients saw the same events in the same order as
``/messages``, and every event was pushed to the reader's push gateway.

``CHAOS_SENDS`` sets the number of sends (default 800 for CI on 2 cores; the issue's
figure is ``CHAOS_SENDS=10000``). ``-rP`` shows the counts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from homeserver.storage.database import Database
from homeserver.storage.leases import JobLeaseStore
from tests.conftest import in_thread, truncate
from tests.e2e.conftest import free_port
from tests.e2e.workers import V3, WS_PATH, Deployment, Person, ensure_binary, register
from tests.push_servers import FakeGateway, until, until_async
from tests.redis_process import start_redis

SENDS = int(os.environ.get("CHAOS_SENDS", "800"))
SENDERS = 4
LANES = 2  # sends in flight per sender (one access token, distinct transaction IDs)
RETRY_PAUSE_S = 0.2
REDIS_DOWN_S = 5.0
SETTLE_S = 90.0  # after the last send: syncs and pushes catch up
PUSH_STALL_S = 30.0  # a pusher quiet this long with pushes left to send has stalled
PUSHER_LEASE = "pusher"
FOLLOW_FILTER = {"room": {"timeline": {"limit": 1000}}, "presence": {"types": []}}


@dataclass
class Tally:
    """What the clients saw: acknowledged sends, and failures by kind."""

    acked: dict[str, str] = field(default_factory=dict)  # body -> event ID
    txns: dict[str, tuple[Person, str]] = field(default_factory=dict)  # body -> who, txn
    failures: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)  # what the chaos did, and when

    pushed: Callable[[], int] = lambda: 0  # pushes the gateway received so far

    def note(self, start: float, what: str) -> None:
        when = f"{time.monotonic() - start:6.1f} s"
        self.events.append(f"{when}  {what} (acked {len(self.acked)}, pushed {self.pushed()})")
        print(self.events[-1], flush=True)  # as it happens, with -s


async def _until_acked(
    http: httpx.AsyncClient, person: Person, path: str, body: dict[str, Any], tally: Tally
) -> httpx.Response:
    """A PUT retried as a client retries: the same path (so the same transaction ID) until
    a 200, whatever failed (a worker killed under it, HAProxy with no worker up)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            r = await http.put(path, json=body, headers=person.headers)
        except httpx.TransportError as e:
            tally.failures[type(e).__name__] += 1
        else:
            if r.status_code == 200:
                return r
            tally.failures[f"HTTP {r.status_code}"] += 1
        assert time.monotonic() < deadline, f"{path} failed for {SETTLE_S} s: {tally.failures}"
        await asyncio.sleep(RETRY_PAUSE_S)


async def _send_lane(
    http: httpx.AsyncClient, person: Person, lane: str, count: int, room_id: str, tally: Tally
) -> None:
    for n in range(count):
        body = f"chaos {lane} {n}"
        txn = f"{lane}-{n}"
        tally.txns[body] = (person, txn)
        r = await _until_acked(
            http,
            person,
            f"{V3}/rooms/{room_id}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body},
            tally,
        )
        tally.acked[body] = r.json()["event_id"]


@dataclass
class Following:
    """One client following the room: its filter, its token, what it saw."""

    person: Person
    room_id: str
    filter_id: str
    since: str
    stop: asyncio.Event
    tally: Tally
    seen: list[str] = field(default_factory=list)  # event IDs of messages, in order


async def _start_following(
    person: Person, room_id: str, stop: asyncio.Event, tally: Tally
) -> Following:
    """A filter and a first token, taken before anything is sent."""
    path = f"/user/{person.user_id}/filter"
    filter_id = (await person.call("POST", path, FOLLOW_FILTER))["filter_id"]
    since = (await person.call("GET", "/sync", timeout="0", filter=filter_id))["next_batch"]
    return Following(person, room_id, filter_id, since, stop, tally)


async def _follow(http: httpx.AsyncClient, f: Following) -> None:
    """Long-poll the room through HAProxy from one token to the next, as a client does."""
    while not f.stop.is_set():
        try:
            r = await http.get(
                f"{V3}/sync",
                params={"since": f.since, "timeout": "5000", "filter": f.filter_id},
                headers=f.person.headers,
            )
        except httpx.TransportError as e:
            f.tally.failures[f"sync {type(e).__name__}"] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        if r.status_code != 200:
            f.tally.failures[f"sync HTTP {r.status_code}"] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        await _absorb(f, r.json())


async def _follow_websocket(url: str, f: Following) -> None:
    """The same over the WebSocket transport through HAProxy (docs/websocket.md): a
    connection cut (its worker killed, HAProxy with no worker up) is opened again from the
    ``next_batch`` of the last frame taken in."""
    while not f.stop.is_set():
        query = urlencode({"since": f.since, "filter": f.filter_id})
        try:
            async with connect(
                f"{url}{WS_PATH}?{query}",
                additional_headers=f.person.headers,
                max_size=None,
                proxy=None,
                ping_interval=None,
            ) as ws:
                while not f.stop.is_set():
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                    except TimeoutError:
                        continue
                    if frame.get("type") == "sync":
                        await _absorb(f, frame)
        except (OSError, WebSocketException) as e:
            f.tally.failures[f"websocket {type(e).__name__}"] += 1
            await asyncio.sleep(RETRY_PAUSE_S)


async def _absorb(f: Following, answer: dict[str, Any]) -> None:
    """A sync answer's messages into ``f.seen`` and its token into ``f.since``; a limited
    timeline is filled from its ``prev_batch`` through ``/messages`` back to the last
    event seen."""
    timeline = answer.get("rooms", {}).get("join", {}).get(f.room_id, {}).get("timeline")
    if timeline is not None:
        new = _messages(timeline["events"])
        if timeline.get("limited") and f.seen:
            f.tally.failures["sync limited"] += 1
            new = await _back_to(f.person, f.room_id, timeline["prev_batch"], f.seen[-1]) + new
        f.seen.extend(new)
    f.since = answer["next_batch"]


async def _back_to(person: Person, room_id: str, token: str, last_seen: str) -> list[str]:
    """The messages before ``token`` after ``last_seen``, oldest first."""
    found: list[str] = []
    while True:
        params = {"dir": "b", "limit": "1000", "from": token}
        page = await person.call("GET", f"/rooms/{room_id}/messages", **params)
        ids = [e["event_id"] for e in page["chunk"]]
        if last_seen in ids:
            return list(reversed(found + _messages(page["chunk"][: ids.index(last_seen)])))
        found += _messages(page["chunk"])
        assert page.get("end"), "reached the room's start without the last event seen"
        token = page["end"]


def _messages(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["event_id"]
        for e in events
        if e["type"] == "m.room.message" and str(e["content"].get("body", "")).startswith("chaos ")
    ]


async def _history(person: Person, room_id: str) -> list[dict[str, Any]]:
    """Every chaos message in ``/messages`` order, oldest first."""
    newest_first: list[dict[str, Any]] = []
    token = None
    while True:
        params = {"dir": "b", "limit": "1000", **({"from": token} if token else {})}
        page = await person.call("GET", f"/rooms/{room_id}/messages", **params)
        newest_first += [e for e in page["chunk"] if e["event_id"] in _messages([e])]
        if not page["chunk"] or not page.get("end"):
            return list(reversed(newest_first))
        token = page["end"]


async def _lease_holder_pid(db: Database) -> int | None:
    """The process holding the pusher lease (owner ``<worker>:<host>:<pid>:<random>``)."""
    owner = await JobLeaseStore(db).holder(PUSHER_LEASE)
    return None if owner is None else int(owner.split(":")[2])


@pytest.fixture
async def redis_of_our_own(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    port = free_port()
    holder: dict[str, Any] = {"port": port, "proc": start_redis(port, tmp_path)}
    try:
        yield holder
    finally:
        holder["proc"].terminate()
        holder["proc"].wait(10)


@pytest.mark.timeout(max(600, SENDS // 4))  # pushes drain at ~5/s under load on 2 cores
async def test_chaos_every_acknowledged_send_once_in_one_order(
    tmp_path: Path, pg_database: str, redis_of_our_own: dict[str, Any]
) -> None:
    haproxy = ensure_binary("haproxy", "haproxy")
    in_thread(lambda: truncate(pg_database))
    db = Database(pg_database, pool_size=1)
    redis_port = redis_of_our_own["port"]
    async with FakeGateway() as gateway:
        deployment = Deployment(
            tmp_path,
            pg_database,
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            config={
                "push": {"allow_http": True, "poll_interval_ms": 500, "only_when_offline": False},
                "outbound": {"allow_addresses": ["127.0.0.1/32"]},
            },
        )
        try:
            await asyncio.to_thread(deployment.start, haproxy)
            await _run(deployment, db, gateway, redis_of_our_own, tmp_path)
        finally:
            await asyncio.to_thread(deployment.stop)
            await db.close()


async def _run(
    deployment: Deployment,
    db: Database,
    gateway: FakeGateway,
    redis: dict[str, Any],
    tmp_path: Path,
) -> None:
    # Generous pool: the senders, the followers and their retries at once.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=deployment.front_url, timeout=30, limits=limits) as http:
        reader = await register(http, "reader")
        senders = [await register(http, f"sender{i}") for i in range(SENDERS)]
        room_id = (await senders[0].call("POST", "/createRoom", {"preset": "public_chat"}))[
            "room_id"
        ]
        for person in (reader, *senders[1:]):
            await person.call("POST", f"/join/{room_id}", {})
        await reader.call(
            "POST",
            "/pushers/set",
            {
                "kind": "http",
                "app_id": "org.example.chaos",
                "pushkey": "reader-phone",
                "app_display_name": "App",
                "device_display_name": "Phone",
                "lang": "en",
                "data": {"url": gateway.url},
            },
        )

        tally = Tally(pushed=lambda: len(gateway.received))
        stop = asyncio.Event()
        reading, writing, on_websocket = [
            await _start_following(person, room_id, stop, tally)
            for person in (reader, senders[0], senders[1])
        ]
        ws_url = deployment.front_url.replace("http://", "ws://")
        followers = [
            asyncio.create_task(_follow(http, reading)),
            asyncio.create_task(_follow(http, writing)),
            asyncio.create_task(_follow_websocket(ws_url, on_websocket)),
        ]
        everyone = (reading.seen, writing.seen, on_websocket.seen)
        start = time.monotonic()
        lanes = [(s, f"s{i}l{j}") for i, s in enumerate(senders) for j in range(LANES)]
        per_lane = [SENDS // len(lanes) + (k < SENDS % len(lanes)) for k in range(len(lanes))]
        sending = [
            asyncio.create_task(_send_lane(http, person, lane, count, room_id, tally))
            for (person, lane), count in zip(lanes, per_lane, strict=True)
        ]
        chaos = asyncio.create_task(_chaos(deployment, db, redis, tmp_path, tally, start))
        try:
            await asyncio.gather(*sending)
            sent_s = time.monotonic() - start
            tally.note(start, "every send acknowledged")
            await chaos
        finally:
            for task in (*sending, chaos):
                task.cancel()
        await asyncio.to_thread(deployment.wait_all_healthy, SETTLE_S)
        # HAProxy sends to a worker again after two good checks (config/haproxy.cfg).
        await asyncio.to_thread(
            deployment.wait_healthy, deployment.front_url, time.monotonic() + SETTLE_S
        )
        acked_ids = set(tally.acked.values())

        # The three followers catch up; the pusher sends every event.
        def caught_up() -> bool:
            return all(acked_ids <= set(seen) for seen in everyone)

        try:
            await until(lambda: caught_up() or any(f.done() for f in followers), SETTLE_S)
            for follower in followers:
                if follower.done():
                    follower.result()  # its error, if it failed
            await _until_pushed(gateway, acked_ids)
            tally.note(start, "every event pushed")
        except AssertionError:
            tally.note(start, "gave up waiting")
            print(dict(tally.failures))
            for seen in everyone:
                missing = acked_ids - set(seen)
                print(f"seen {len(seen)}, missing {len(missing)}: {sorted(missing)[:5]}")
            print(f"not pushed: {len(acked_ids - set(_pushed(gateway)))}")
            print(deployment.log()[-6000:])
            raise
        finally:
            stop.set()
            await asyncio.gather(*followers, return_exceptions=True)

        history = await _history(reader, room_id)
        # Retrying a transaction ID on any worker, after all that, gives the same event.
        for body in list(tally.txns)[:: max(1, SENDS // 40)]:
            person, txn = tally.txns[body]
            again = await person.call(
                "PUT",
                f"/rooms/{room_id}/send/m.room.message/{txn}",
                {"msgtype": "m.text", "body": body},
            )
            assert again["event_id"] == tally.acked[body], body

    pushes = Counter(_pushed(gateway))
    print(f"\nchaos: {SENDS} sends in {sent_s:.1f} s ({SENDS / sent_s:.0f}/s), 3 workers")
    print("\n".join(tally.events))
    print(f"failed attempts retried: {dict(tally.failures)}")
    print(
        f"pushes: {sum(pushes.values())} for {len(pushes)} events, "
        f"{sum(n - 1 for n in pushes.values())} sent again"
    )

    ids = [e["event_id"] for e in history]
    bodies = [e["content"]["body"] for e in history]
    assert len(tally.acked) == SENDS
    assert len(ids) == len(set(ids)), "an event twice in /messages"
    duplicates = [b for b, n in Counter(bodies).items() if n > 1]
    assert not duplicates, f"retries made duplicates: {duplicates[:5]}"
    assert set(ids) == acked_ids, "/messages differs from the acknowledged sends"
    # One lane sends one after another: its messages are in its order.
    for _, lane in lanes:
        numbers = [int(b.split()[2]) for b in bodies if b.split()[1] == lane]
        assert numbers == sorted(numbers), lane
    # Every client, by long-poll or WebSocket, saw each event once, in /messages order.
    assert reading.seen == ids
    assert writing.seen == ids
    assert on_websocket.seen == ids
    # Every event pushed (at least once: a holder killed between the gateway's 200 and the
    # queue row's delete sends that one again, which the spec allows).
    assert acked_ids <= set(pushes)


async def _chaos(
    deployment: Deployment,
    db: Database,
    redis: dict[str, Any],
    tmp_path: Path,
    tally: Tally,
    start: float,
) -> None:
    async def progress(share: float) -> None:
        await until(lambda: len(tally.acked) >= SENDS * share, timeout_s=SETTLE_S * 2)

    # 1. kill -9 a worker that holds no singleton; the supervisor starts it again.
    await progress(0.1)
    holder = await _lease_holder_pid(db)
    pids = deployment.worker_pids()
    name, pid = next((n, p) for n, p in sorted(pids.items()) if p != holder)
    os.kill(pid, signal.SIGKILL)
    tally.note(start, f"kill -9 {name} (pid {pid})")

    # 2. kill -9 the singleton holder: another worker takes the leases over.
    await progress(0.3)
    holder = await _lease_holder_pid(db)
    assert holder is not None
    held_by = next(n for n, p in deployment.worker_pids().items() if p == holder)
    os.kill(holder, signal.SIGKILL)
    killed = time.monotonic()
    tally.note(start, f"kill -9 the singleton holder {held_by} (pid {holder})")

    async def taken_over() -> bool:
        return await _lease_holder_pid(db) not in (holder, None)

    await until_async(taken_over, timeout_s=30)
    tally.note(start, f"pusher lease taken over after {time.monotonic() - killed:.1f} s")

    # 3. Redis stopped for 5 s, then started again on its port.
    await progress(0.5)
    redis["proc"].terminate()
    await asyncio.to_thread(redis["proc"].wait, 10)
    tally.note(start, "Redis stopped")
    await asyncio.sleep(REDIS_DOWN_S)
    redis["proc"] = start_redis(redis["port"], tmp_path)
    tally.note(start, "Redis started again")
    await asyncio.to_thread(deployment.wait_all_healthy, SETTLE_S)
    restarted = deployment.worker_pids()
    assert restarted.keys() == pids.keys()
    assert restarted[name] != pid and restarted[held_by] != holder
    tally.note(start, "every worker healthy, both killed ones started again")


async def _until_pushed(gateway: FakeGateway, event_ids: set[str]) -> None:
    """Until every event is pushed, for as long as pushes keep coming: one device's pushes
    go one at a time, in order (5-10 a second while the sends load 2 cores, below the send
    rate), so a long run leaves a queue that drains after the last send."""
    count, moved = len(gateway.received), time.monotonic()
    while not event_ids <= set(_pushed(gateway)):
        if len(gateway.received) != count:
            count, moved = len(gateway.received), time.monotonic()
        assert time.monotonic() - moved < PUSH_STALL_S, f"no push for {PUSH_STALL_S} s"
        await asyncio.sleep(0.2)


def _pushed(gateway: FakeGateway) -> list[str]:
    return [n["notification"].get("event_id") for n in gateway.received]
