"""``/health`` (for load balancers), ``listen.trusted_proxies`` (the client's address behind
one) and the refusal of several workers without PostgreSQL and Redis."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.cli import main, several_workers_problem
from homeserver.core.config import ConfigError, parse_config
from tests.api.admin_helpers import call, make_admin
from tests.conftest import make_config
from tests.helpers import auth_header, login, register, serve

V3 = "/_matrix/client/v3"


async def test_health_answers_ok_with_the_worker_name(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "worker": "main"}
    assert r.headers["cache-control"] == "no-store"
    assert (await client.head("/health")).status_code == 200
    assert (await client.post("/health")).json()["errcode"] == "M_UNRECOGNIZED"


async def test_health_is_503_while_shutting_down(client: httpx.AsyncClient, hs: Homeserver) -> None:
    hs.begin_shutdown()
    r = await client.get("/health")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "worker": "main", "reasons": ["shutting down"]}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_health_checks_redis_when_configured(tmp_path: Path, db_url: str) -> None:
    up = make_config(tmp_path / "up", db_url, redis={"url": "redis://127.0.0.1:6379/0"})
    async with serve(up) as (_, client):
        r = await client.get("/health")
        # The bus subscribes in a background job: ok once it has.
        for _ in range(100):
            if r.status_code == 200:
                break
            r = await client.get("/health")
        assert r.json() == {"status": "ok", "worker": "main"}
    down = make_config(
        tmp_path / "down", db_url, redis={"url": f"redis://127.0.0.1:{_closed_port()}/0"}
    )
    async with serve(down) as (_, client):
        r = await client.get("/health")
        assert r.status_code == 503
        assert r.json()["reasons"] == ["redis unreachable"]


async def test_health_is_503_when_the_database_cannot_answer(
    client: httpx.AsyncClient, hs: Homeserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable() -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(hs.db, "ping", unreachable)
    # The route's services were built with the bound method: rebuild them.
    from homeserver.routing import route_services

    hs.app.state.services = {type(s): s for s in route_services(hs)}
    r = await client.get("/health")
    assert r.status_code == 503
    assert r.json()["reasons"] == ["database unreachable"]


async def _last_ip(client: httpx.AsyncClient, admin: str, user_id: str) -> str:
    who = await call(client, admin, "GET", f"/v1/whois/{user_id}")
    connections = [c for s in who["devices"][""]["sessions"] for c in s["connections"]]
    return str(connections[-1]["ip"])


@pytest.mark.parametrize(
    ("trusted", "forwarded", "seen"),
    [
        # The test client's address is 127.0.0.1: a proxy of ours, or not.
        (["127.0.0.1"], "203.0.113.7", "203.0.113.7"),
        (["127.0.0.0/8", "10.0.0.0/8"], "198.51.100.2, 10.1.2.3", "198.51.100.2"),
        # What an untrusted hop put left of itself is not believed.
        (["127.0.0.1"], "192.0.2.66, 203.0.113.9", "203.0.113.9"),
        (["127.0.0.1"], "not-an-address", "127.0.0.1"),
        (["::1/128", "127.0.0.1"], "2001:db8::5", "2001:db8::5"),
        ([], "203.0.113.7", "127.0.0.1"),  # no proxies configured: the header is ignored
        (["10.0.0.0/8"], "203.0.113.7", "127.0.0.1"),  # from a peer that is not a proxy
    ],
)
async def test_the_client_address_comes_from_trusted_proxies_only(
    tmp_path: Path, db_url: str, trusted: list[str], forwarded: str, seen: str
) -> None:
    config = make_config(tmp_path, db_url, listen={"trusted_proxies": trusted})
    async with serve(config) as (hs, client):
        admin = await make_admin(hs, client)
        bob, _ = await register(client, "bob")
        token = (await login(client, "bob"))["access_token"]
        headers = {**auth_header(token), "X-Forwarded-For": forwarded}
        assert (await client.get(f"{V3}/account/whoami", headers=headers)).status_code == 200
        assert await _last_ip(client, admin, bob) == seen


def test_a_trusted_proxy_must_be_an_address_or_network(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'lb' does not appear to be an IPv4 or IPv6 network"):
        parse_config(
            {"server_name": "t", "data_dir": str(tmp_path), "listen": {"trusted_proxies": ["lb"]}}
        )


def test_several_workers_need_postgresql_and_redis(tmp_path: Path) -> None:
    sqlite = parse_config({"server_name": "t", "data_dir": str(tmp_path)})
    assert several_workers_problem(sqlite, 1) is None
    assert "need PostgreSQL" in (several_workers_problem(sqlite, 3) or "")
    named = sqlite.model_copy(update={"worker": sqlite.worker.model_copy(update={"name": "w2"})})
    assert "worker.name 'w2'" in (several_workers_problem(named, 1) or "")
    pg = parse_config(
        {
            "server_name": "t",
            "data_dir": str(tmp_path),
            "database": {"url": "postgresql+asyncpg://u@127.0.0.1/db"},
        }
    )
    assert "need Redis (redis.url)" in (several_workers_problem(pg, 2) or "")
    both = parse_config(
        {
            "server_name": "t",
            "data_dir": str(tmp_path),
            "database": {"url": "postgresql+asyncpg://u@127.0.0.1/db"},
            "redis": {"url": "redis://127.0.0.1:6379/0"},
        }
    )
    assert several_workers_problem(both, 3) is None
    assert several_workers_problem(both, 0) == "--workers must be at least 1"


def test_run_refuses_several_workers_on_sqlite_at_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text(f"server_name: t\ndata_dir: {tmp_path}\n")
    assert main(["-c", str(path), "run", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "Config error: --workers 2: several workers need PostgreSQL" in err
