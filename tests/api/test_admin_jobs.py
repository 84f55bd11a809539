"""The admin API on background jobs (``/v1/background_updates/*``), on both databases: the
status lists media retention with its lease, last and next run, other singleton leases, and
the queues of pushers, application services and federation with their depth and back-off;
``start_job`` runs a round of media retention; non-admins are refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.storage.schema import (
    appservice_state,
    appservice_txns,
    federation_destinations,
    federation_outbound_edus,
    federation_outbound_pdus,
    job_leases,
    push_queue,
    pushers,
)
from tests.api.admin_helpers import call, make_admin, refused_to_non_admins
from tests.api.test_media import MEDIA, upload
from tests.conftest import make_config
from tests.helpers import auth_header, register, serve

DAY = 24 * 3600 * 1000


def _job(status: dict[str, Any], name: str) -> dict[str, Any]:
    found = [job for job in status["jobs"] if job["name"] == name]
    assert len(found) == 1, (name, status)
    return found[0]


async def test_non_admins_are_refused(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "bob")
    await refused_to_non_admins(
        client,
        token,
        [
            ("GET", "/v1/background_updates/status", None),
            ("GET", "/v1/background_updates/enabled", None),
            ("POST", "/v1/background_updates/start_job", {"job_name": "media_retention"}),
        ],
    )


async def test_status_of_an_idle_server(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    status = await call(client, admin, "GET", "/v1/background_updates/status")
    assert status["enabled"] is True and status["current_updates"] == {}
    retention = _job(status, "media_retention")
    assert retention["state"] == "disabled" and retention["last_run_ts"] is None
    pusher = _job(status, "pusher_sender")
    assert pusher["state"] == "idle" and pusher["queued"] == 0 and pusher["next_run_ts"] is None
    federation = _job(status, "federation_queue")
    assert federation["state"] == "idle" and federation["queued"] == 0
    assert not [job for job in status["jobs"] if job["name"].startswith("appservice:")]
    assert await call(client, admin, "GET", "/v1/background_updates/enabled") == {"enabled": True}
    # Without retention configured there is nothing to start; an unknown job is refused.
    await call(
        client,
        admin,
        "POST",
        "/v1/background_updates/start_job",
        {"job_name": "media_retention"},
        400,
        "M_INVALID_PARAM",
    )
    for body in ({"job_name": "regenerate_directory"}, {"job_name": ""}, {}, {"job_name": 3}):
        r = await client.post(
            "/_synapse/admin/v1/background_updates/start_job",
            headers=auth_header(admin),
            json=body,
        )
        assert r.status_code == 400, (body, r.text)
        assert r.json()["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON", "M_MISSING_PARAM")
    r = await client.post(
        "/_synapse/admin/v1/background_updates/start_job",
        headers=auth_header(admin),
        content=b"not json",
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_NOT_JSON"


async def test_media_retention_job(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path, db_url, media={"retention": {"local_media_lifetime_ms": 2 * DAY}}
    )
    clock = FakeClock()
    interval = config.media.retention.interval_ms
    async with serve(config, clock) as (hs, client):
        admin = await make_admin(hs, client)
        _, token = await register(client, "bob")
        idle = await upload(client, token, os.urandom(100))
        # The job ran its first round as the server started, on this worker.
        job = _job(
            await call(client, admin, "GET", "/v1/background_updates/status"), "media_retention"
        )
        assert job["kind"] == "singleton" and job["state"] == "running"
        assert job["interval_ms"] == interval and job["last_deleted"] == 0
        assert job["owner"] is not None and job["last_run_ts"] is not None
        assert job["next_run_ts"] == job["last_run_ts"] + interval

        clock.advance(3 * DAY)
        started = clock.now_ms()
        r = await call(
            client,
            admin,
            "POST",
            "/v1/background_updates/start_job",
            {"job_name": "media_retention"},
        )
        assert r == {"deleted": 1}
        r = await client.get(f"{MEDIA}/download/{idle[6:]}", headers=auth_header(token))
        assert r.status_code == 404
        clock.advance(1000)
        job = _job(
            await call(client, admin, "GET", "/v1/background_updates/status"), "media_retention"
        )
        assert job["state"] == "running"
        assert job["owner"] is not None
        assert job["lease_until_ts"] == started + 2 * interval
        assert job["last_run_ts"] == started and job["last_deleted"] == 1
        assert job["next_run_ts"] == started + interval

        # Another worker holds the lease: start_job says so, and the status names it.
        await hs.media_retention.release()
        async with hs.db.write() as conn:
            await conn.execute(
                sa.update(job_leases)
                .where(job_leases.c.name == "media_retention")
                .values(owner="other-worker", until_ts=clock.now_ms() + 2 * interval)
            )
        await call(
            client,
            admin,
            "POST",
            "/v1/background_updates/start_job",
            {"job_name": "media_retention"},
            409,
            "M_UNKNOWN",
        )
        job = _job(
            await call(client, admin, "GET", "/v1/background_updates/status"), "media_retention"
        )
        assert job["owner"] == "other-worker" and job["state"] == "running"

        # Its lease lapsed: nobody runs it until a worker claims it again.
        clock.advance(2 * interval + 1)
        job = _job(
            await call(client, admin, "GET", "/v1/background_updates/status"), "media_retention"
        )
        assert job["state"] == "waiting" and job["owner"] is None


async def test_queues(client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock) -> None:
    admin = await make_admin(hs, client)
    now = clock.now_ms()
    async with hs.db.write() as conn:
        # A singleton job of which nothing but its lease is known.
        await conn.execute(
            sa.insert(job_leases).values(name="some_singleton", owner="w1", until_ts=now + 5000)
        )
        # Two pushers: one with two notifications, failing; one with none.
        for pusher_id, attempts in ((1, 2), (2, 0)):
            await conn.execute(
                sa.insert(pushers).values(
                    id=pusher_id,
                    user_id="@bob:test",
                    kind="http",
                    app_id="app",
                    pushkey=f"key{pusher_id}",
                    app_display_name="App",
                    device_display_name="Phone",
                    lang="en",
                    data={"url": "https://push.invalid/_matrix/push/v1/notify"},
                    pushkey_ts=now,
                    attempts=attempts,
                    next_attempt_ts=now + 60_000 if attempts else 0,
                )
            )
        for n in range(2):
            await conn.execute(
                sa.insert(push_queue).values(
                    pusher_id=1,
                    stream_ordering=n + 1,
                    user_id="@bob:test",
                    room_id="!r:test",
                    event_id=f"$e{n}",
                    actions="[]",
                    event_ts=now - 1000 + n,
                    due_ts=now + n,
                )
            )
        # Federation: one destination backing off with 3 PDUs and an EDU, one caught up.
        for destination, interval in (("down.example", 4000), ("up.example", 0)):
            await conn.execute(
                sa.insert(federation_destinations).values(
                    destination=destination,
                    retry_interval_ms=interval,
                    retry_at_ts=now + interval,
                    next_txn_id=1,
                    catching_up=interval > 0,
                )
            )
        for n in range(3):
            await conn.execute(
                sa.insert(federation_outbound_pdus).values(
                    destination="down.example",
                    stream_ordering=n + 1,
                    room_id="!r:test",
                    event_id=f"$p{n}",
                )
            )
        await conn.execute(
            sa.insert(federation_outbound_edus).values(
                destination="down.example",
                edu_type="m.typing",
                content_json="{}",
                queued_ts=now - 500,
            )
        )
    status = await call(client, admin, "GET", "/v1/background_updates/status")
    assert _job(status, "some_singleton") == {
        "name": "some_singleton",
        "kind": "singleton",
        "state": "running",
        "owner": "w1",
        "lease_until_ts": now + 5000,
        "last_run_ts": None,
        "next_run_ts": None,
    }
    assert _job(status, "pusher_sender") == {
        "name": "pusher_sender",
        "kind": "queue",
        "state": "backing_off",
        "pushers": 2,
        "pushers_with_queue": 1,
        "pushers_backing_off": 1,
        "queued": 2,
        "oldest_queued_ts": now - 1000,
        "next_run_ts": now,
    }
    assert _job(status, "federation_queue") == {
        "name": "federation_queue",
        "kind": "queue",
        "state": "backing_off",
        "destinations": 2,
        "destinations_backing_off": 1,
        "destinations_catching_up": 1,
        "queued": 4,
        "queued_pdus": 3,
        "queued_edus": 1,
        "oldest_queued_ts": now - 500,
        "next_run_ts": now + 4000,
    }


async def test_appservice_queues(tmp_path: Path, db_url: str) -> None:
    from tests.appservice_helpers import registration, write_registration

    files = [write_registration(tmp_path / "bridge.yaml", registration("http://127.0.0.1:9"))]
    config = make_config(tmp_path, db_url, app_service_config_files=files)
    clock = FakeClock()
    async with serve(config, clock) as (hs, client):
        admin = await make_admin(hs, client)
        now = clock.now_ms()
        # The service's row is made as the server starts: nothing queued yet.
        status = await call(client, admin, "GET", "/v1/background_updates/status")
        job = _job(status, "appservice:bridge")
        assert job["state"] == "idle" and job["queued"] == 0 and job["next_run_ts"] is None
        async with hs.db.write() as conn:
            await conn.execute(
                sa.update(appservice_state)
                .where(appservice_state.c.service_id == "bridge")
                .values(
                    last_txn_id=7,
                    attempts=3,
                    next_attempt_ts=now + 8000,
                    lease_owner="w2",
                    lease_until_ts=now + 1000,
                )
            )
            for txn_id in (6, 7):
                await conn.execute(
                    sa.insert(appservice_txns).values(
                        service_id="bridge", txn_id=txn_id, body="{}", created_ts=now - txn_id
                    )
                )
        status = await call(client, admin, "GET", "/v1/background_updates/status")
        assert _job(status, "appservice:bridge") == {
            "name": "appservice:bridge",
            "kind": "queue",
            "state": "backing_off",
            "queued": 2,
            "oldest_queued_ts": now - 7,
            "last_txn_id": 7,
            "failed_attempts": 3,
            "owner": "w2",
            "next_run_ts": now + 8000,
        }
        # Delivered: the queue is empty and the service idle.
        async with hs.db.write() as conn:
            await conn.execute(sa.delete(appservice_txns))
            await conn.execute(sa.update(appservice_state).values(attempts=0))
        clock.advance(2000)
        status = await call(client, admin, "GET", "/v1/background_updates/status")
        job = _job(status, "appservice:bridge")
        assert job["state"] == "idle" and job["queued"] == 0 and job["owner"] is None
