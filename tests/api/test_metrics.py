"""Prometheus metrics on their own listener (docs/metrics.md), parsed with prometheus_client's
text parser."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import quote

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from tests.conftest import make_config
from tests.helpers import auth_header, checked, create_room, register, serve

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
SEND = "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"


def documented_families() -> set[str]:
    """The family names of docs/metrics.md's table (the first column)."""
    names = re.findall(r"^\| `([a-z_]+)` \|", DOCS.read_text(), flags=re.M)
    assert len(names) >= 15
    return set(names)


async def scrape(hs: Homeserver) -> dict[str, list[Sample]]:
    listener = hs.metrics_listener
    assert listener is not None
    await asyncio.wait_for(listener.ready.wait(), 10)
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{listener.port}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    families = {}
    for family in text_string_to_metric_families(r.text):
        # The parser names a counter's family without its _total; the docs name the samples.
        name = family.name + "_total" if family.type == "counter" else family.name
        families[name] = family.samples
    return families


def value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_scrape_has_every_documented_family(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, metrics={"listen": {"host": "127.0.0.1", "port": 0}})
    async with serve(config, FakeClock()) as (hs, client):
        _, token = await register(client, "alice")
        room = await create_room(client, token)
        for i in range(3):
            r = await client.put(
                f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/t{i}",
                headers=auth_header(token),
                json={"msgtype": "m.text", "body": "hi"},
            )
            checked(r)
        r = await client.get("/_matrix/client/v3/sync", headers=auth_header(token))
        checked(r)
        r = await client.get("/_matrix/client/v3/no/such/thing")
        assert r.status_code == 404
        families = await scrape(hs)
    missing = documented_families() - set(families)
    assert missing == set()
    requests = families["homeserver_http_request_duration_seconds"]
    count = "homeserver_http_request_duration_seconds_count"
    assert value(requests, count, route=SEND, method="PUT", status="2xx") == 3
    assert value(requests, count, route="/_matrix/client/v3/sync", status="2xx") == 1
    assert value(requests, count, route="unmatched", status="4xx") == 1
    # Templates only: no room ID, event ID or raw path in any label.
    routes = {s.labels["route"] for s in requests if "route" in s.labels}
    assert not any(room in r or "/t0" in r for r in routes)
    persist = families["homeserver_event_persist_duration_seconds"]
    # The room's creation events and the three messages, each persisted by the sender.
    assert value(persist, "homeserver_event_persist_duration_seconds_count") >= 8
    in_flight = families["homeserver_http_requests_in_flight"]
    assert value(in_flight, "homeserver_http_requests_in_flight") == 0
    pools = families["homeserver_db_pool_size"]
    if db_url.startswith("postgresql"):
        assert value(pools, "homeserver_db_pool_size", pool="write") == 10
        assert value(pools, "homeserver_db_pool_size", pool="read") == 20
    else:
        assert pools == []
    reads = families["homeserver_shared_reads_total"]
    assert {s.labels["cache"] for s in reads} >= {"events"}


async def test_waiting_syncs_and_wakeups(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, metrics={"listen": {"host": "127.0.0.1", "port": 0}})
    async with serve(config, FakeClock()) as (hs, client):
        _, token = await register(client, "alice")
        room = await create_room(client, token)
        r = await client.get("/_matrix/client/v3/sync", headers=auth_header(token))
        since = checked(r)["next_batch"]
        before = await scrape(hs)
        assert value(before["homeserver_sync_waiting"], "homeserver_sync_waiting") == 0
        poll = asyncio.create_task(
            client.get(
                "/_matrix/client/v3/sync",
                params={"since": since, "timeout": "20000"},
                headers=auth_header(token),
            )
        )
        async with asyncio.timeout(10):
            while hs.notifier.waiting() == 0:
                await asyncio.sleep(0.01)  # until the long-poll listens
        during = await scrape(hs)
        assert value(during["homeserver_sync_waiting"], "homeserver_sync_waiting") == 1
        in_flight = during["homeserver_http_requests_in_flight"]
        assert value(in_flight, "homeserver_http_requests_in_flight") == 1
        r = await client.put(
            f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/wake",
            headers=auth_header(token),
            json={"msgtype": "m.text", "body": "wake up"},
        )
        checked(r)
        assert checked(await poll)["rooms"]["join"][room]["timeline"]["events"]
        after = await scrape(hs)
    woken = "homeserver_wakeups_delivered_total"
    assert value(after[woken], woken) > value(before[woken], woken)
    received = "homeserver_wakeups_received_total"
    assert value(after[received], received) > value(before[received], received)
    assert value(after["homeserver_sync_waiting"], "homeserver_sync_waiting") == 0


async def test_listener_answers_metrics_only(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, metrics={"listen": {"host": "127.0.0.1", "port": 0}})
    async with serve(config, FakeClock()) as (hs, _):
        listener = hs.metrics_listener
        assert listener is not None
        await asyncio.wait_for(listener.ready.wait(), 10)
        base = f"http://127.0.0.1:{listener.port}"
        async with httpx.AsyncClient() as http:
            assert (await http.get(base + "/")).status_code == 404
            assert (await http.get(base + "/_matrix/client/versions")).status_code == 404
            assert (await http.post(base + "/metrics")).status_code == 405
            assert (await http.get(base + "/metrics?name[]=x")).status_code == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()


async def test_off_by_default(hs: Homeserver) -> None:
    assert hs.metrics_listener is None
    assert hs.config.metrics.listen is None


def test_dashboard_queries_documented_families() -> None:
    """config/grafana-dashboard.json asks only for families docs/metrics.md lists."""
    dashboard = json.loads((DOCS.parents[1] / "config" / "grafana-dashboard.json").read_text())
    families = documented_families()
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used.update(re.findall(r"\b((?:homeserver|process|python)_[a-z_]+)\b", target["expr"]))
    assert used
    suffixes = ("_bucket", "_count", "_sum")
    unknown = {
        name
        for name in used
        if name not in families and not any(name.removesuffix(s) in families for s in suffixes)
    }
    assert unknown == set()
