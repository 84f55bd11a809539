"""The federation client against a TLS server on loopback: where it connects, the Host
header and certificate name it uses, and the X-Matrix signature it sends."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from signedjson.key import generate_signing_key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from homeserver.core.clock import FakeClock
from homeserver.federation.auth import parse_x_matrix
from homeserver.federation.client import FederationClient, FederationError, ssl_context
from homeserver.federation.discovery import ServerAddress
from homeserver.federation.keyring import VerifyKey, verify_signature
from homeserver.federation.local_keys import LocalKeys
from homeserver.federation.policy import ServerPolicy
from homeserver.net.addresses import AddressPolicy, IPAddress
from homeserver.net.outbound import Outbound, Reason
from tests.e2e.conftest import free_port
from tests.tls_helpers import make_certificate


class FixedResolver:
    def __init__(self, addresses: list[ServerAddress]) -> None:
        self.addresses = addresses

    async def resolve(self, server_name: str) -> list[ServerAddress]:
        return self.addresses


@pytest.fixture
async def echo_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path, list[dict[str, Any]]]]:
    """Answers every request with what it saw; its certificate is for fed.example only (no
    IP address), so a client connecting to 127.0.0.1 passes only by checking that name."""
    cert = make_certificate(tmp_path / "tls", dns_names=("fed.example",), ips=())
    seen: list[dict[str, Any]] = []

    async def echo(request: Request) -> Response:
        body = await request.body()
        seen.append(
            {
                "method": request.method,
                "target": request.scope["raw_path"].decode()
                + (
                    "?" + request.scope["query_string"].decode()
                    if request.scope["query_string"]
                    else ""
                ),
                "host": request.headers.get("host"),
                "authorization": request.headers.getlist("authorization"),
                "body": body,
            }
        )
        if request.url.path == "/fail":
            return JSONResponse({"errcode": "M_FORBIDDEN", "error": "no"}, status_code=403)
        if request.url.path == "/text":
            return Response("hello", media_type="text/plain")
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "PUT", "POST"])])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(cert.cert_path),
            ssl_keyfile=str(cert.key_path),
            log_level="warning",
            lifespan="off",
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port, cert.ca_path, seen
    finally:
        server.should_exit = True
        await task


async def _resolve_fed_example(host: str, port: int) -> list[IPAddress]:
    assert host == "fed.example"
    return [ipaddress.ip_address("127.0.0.1")]


def make_client(
    addresses: list[ServerAddress],
    ca: Path,
    policy: ServerPolicy | None = None,
    allow: tuple[str, ...] = ("127.0.0.1/32",),
) -> tuple[FederationClient, LocalKeys]:
    keys = LocalKeys("origin.test", generate_signing_key("k1"), {}, FakeClock(), 60_000)
    outbound = Outbound(AddressPolicy(allow), resolver=_resolve_fed_example)
    client = FederationClient(
        keys,
        FixedResolver(addresses),  # type: ignore[arg-type]
        outbound,
        policy or ServerPolicy(),
        tls=ssl_context(str(ca)),
        timeout_s=5,
    )
    return client, keys


async def test_srv_style_target_uses_the_server_name_for_host_and_certificate(
    echo_server: tuple[int, Path, list[dict[str, Any]]],
) -> None:
    port, ca, seen = echo_server
    # As after an SRV record: connect to an address for the target, present and check the
    # server name (fed.example), whose certificate the echo server has.
    address = ServerAddress("127.0.0.1", port, "fed.example", "fed.example")
    client, keys = make_client([address], ca)
    try:
        answer = await client.request(
            "dest.test",
            "PUT",
            "/_matrix/federation/v1/send/1",
            content={"pdus": []},
            query={"a": "b c"},
        )
    finally:
        await client.aclose()
    assert answer == {"ok": True}
    [request] = seen
    assert request["host"] == "fed.example"
    assert request["target"] == "/_matrix/federation/v1/send/1?a=b+c"
    [header] = request["authorization"]
    parsed = parse_x_matrix(header)
    assert (parsed.origin, parsed.destination, parsed.key) == (
        "origin.test",
        "dest.test",
        "ed25519:k1",
    )
    signed = {
        "method": "PUT",
        "uri": request["target"],
        "origin": "origin.test",
        "destination": "dest.test",
        "content": {"pdus": []},
        "signatures": {"origin.test": {parsed.key: parsed.sig}},
    }
    verify_signature(signed, "origin.test", VerifyKey(keys.key_id, keys.verify_key, 0, None))


async def test_hostname_target_is_resolved_and_checked_by_the_transport(
    echo_server: tuple[int, Path, list[dict[str, Any]]],
) -> None:
    port, ca, seen = echo_server
    address = ServerAddress("fed.example", port, f"fed.example:{port}", "fed.example")
    client, _ = make_client([address], ca)
    try:
        assert await client.get_json("fed.example:1", "/x") == {"ok": True}
    finally:
        await client.aclose()
    assert seen[0]["host"] == f"fed.example:{port}"
    # Loopback not allowed: refused before any connection.
    client, _ = make_client([address], ca, allow=())
    try:
        with pytest.raises(FederationError) as e:
            await client.get_json("fed.example:1", "/x")
        assert e.value.reason is Reason.REFUSED
    finally:
        await client.aclose()


async def test_wrong_certificate_name_and_unknown_ca_fail(
    echo_server: tuple[int, Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    port, ca, seen = echo_server
    # The certificate is not for the name the step expects.
    client, _ = make_client(
        [ServerAddress("127.0.0.1", port, "other.example", "other.example")], ca
    )
    try:
        with pytest.raises(FederationError) as e:
            await client.get_json("other.example", "/x")
        assert e.value.reason is Reason.UNREACHABLE
    finally:
        await client.aclose()
    other_ca = make_certificate(tmp_path / "other").ca_path
    client, _ = make_client(
        [ServerAddress("127.0.0.1", port, "fed.example", "fed.example")], other_ca
    )
    try:
        with pytest.raises(FederationError):
            await client.get_json("fed.example", "/x")
    finally:
        await client.aclose()
    assert seen == []  # nothing was sent to a server that did not prove its name


async def test_next_address_is_tried_and_errors_are_reported(
    echo_server: tuple[int, Path, list[dict[str, Any]]],
) -> None:
    port, ca, seen = echo_server
    dead = ServerAddress("127.0.0.1", free_port(), "fed.example", "fed.example")
    live = ServerAddress("127.0.0.1", port, "fed.example", "fed.example")
    client, _ = make_client([dead, live], ca)
    try:
        assert await client.get_json("fed.example", "/x") == {"ok": True}
        with pytest.raises(FederationError) as e:
            await client.get_json("fed.example", "/fail")
        assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")
        with pytest.raises(FederationError) as e:
            await client.get_json("fed.example", "/text")
        assert e.value.status == 200
        with pytest.raises(FederationError) as e:
            await client.get_json("fed.example", "/x", max_bytes=3)
        assert e.value.reason is Reason.TOO_LARGE
    finally:
        await client.aclose()


def test_an_answer_past_the_json_limits_is_no_answer() -> None:
    decode = FederationClient._decode
    assert decode("a.org", 200, b'{"n": 9007199254740991}') == {"n": 9007199254740991}
    for body in (b'{"n": 9007199254740992}', b"[" * 101 + b"]" * 101, b"{nope"):
        with pytest.raises(FederationError, match="not JSON"):
            decode("a.org", 200, body)


async def test_policy_refuses_before_any_request(
    echo_server: tuple[int, Path, list[dict[str, Any]]],
) -> None:
    port, ca, seen = echo_server
    live = ServerAddress("127.0.0.1", port, "fed.example", "fed.example")
    for policy in (
        ServerPolicy(enabled=False),
        ServerPolicy(allow=["*.other"]),
        ServerPolicy(deny=["fed.*"]),
    ):
        client, _ = make_client([live], ca, policy=policy)
        try:
            with pytest.raises(FederationError, match="not allowed"):
                await client.get_json("fed.example", "/x")
        finally:
            await client.aclose()
    assert seen == []
    assert ServerPolicy(allow=["fed.example", "*.test"], deny=["bad.test"]).allows("a.test")
    assert not ServerPolicy(allow=["fed.example", "*.test"], deny=["bad.test"]).allows("bad.test")
    assert not ServerPolicy(allow=["fed.example"]).allows("fed.example:8448")
