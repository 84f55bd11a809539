"""The push gateway against local stand-ins of each provider, checking every request as the
provider documents it: WebPush (decrypted with the subscriber's keys, VAPID verified), APNs
(HTTP/2 over TLS, ES256 provider token), FCM HTTP v1 (OAuth2 service-account JWT, then the
send)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import http_ece  # type: ignore[import-untyped]
import httpx
import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from py_vapid import Vapid02  # type: ignore[import-untyped]

from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from push_gateway.app import Gateway, create_app
from push_gateway.config import GatewayConfigError, parse_gateway_config
from tests.helpers import FakeResolver
from tests.push_servers import LocalHTTP, free_port

NOTIFY = "/_matrix/push/v1/notify"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _notification(*devices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "notification": {
            "event_id": "$ev1",
            "room_id": "!room:example.org",
            "type": "m.room.message",
            "sender": "@alice:example.org",
            "sender_display_name": "Alice",
            "room_name": "Lunch",
            "prio": "high",
            "content": {"msgtype": "m.text", "body": "I'm floating"},
            "counts": {"unread": 2},
            "devices": list(devices),
            **extra,
        }
    }


@pytest.fixture
async def gateway_client(tmp_path: Path) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    gateway = Gateway(parse_gateway_config({"apps": {}}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw"
    ) as client:
        yield gateway, client
    await gateway.aclose()


async def _serve_gateway(config: dict[str, Any]) -> tuple[Gateway, httpx.AsyncClient]:
    gateway = Gateway(parse_gateway_config(config))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw"
    )
    return gateway, client


async def test_notify_api_errors(gateway_client: tuple[Gateway, httpx.AsyncClient]) -> None:
    _, client = gateway_client
    r = await client.post(NOTIFY, content=b"{nope")
    assert (r.status_code, r.json()["errcode"]) == (400, "M_NOT_JSON")
    bodies: list[Any] = [
        [],
        {},
        {"notification": []},
        {"notification": {"devices": []}},
        {"notification": {"devices": [{"app_id": "a"}]}},
        {"notification": {"devices": ["x"]}},
    ]
    for body in bodies:
        r = await client.post(NOTIFY, json=body)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), body
    r = await client.get(NOTIFY)
    assert (r.status_code, r.json()["errcode"]) == (405, "M_UNRECOGNIZED")
    r = await client.post("/_matrix/push/v1/other", json={})
    assert (r.status_code, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")
    # An app this gateway does not serve: the pushkey is rejected.
    r = await client.post(NOTIFY, json=_notification({"app_id": "com.unknown", "pushkey": "k"}))
    assert r.json() == {"rejected": ["k"]}


# --- WebPush ----------------------------------------------------------------------------------


async def test_webpush_encrypted_and_vapid_signed(tmp_path: Path) -> None:
    vapid = Vapid02()
    vapid.generate_keys()
    vapid.save_key(str(tmp_path / "vapid.pem"))
    # The subscriber: a browser's key pair and auth secret (RFC 8291).
    client_key = ec.generate_private_key(ec.SECP256R1())
    p256dh = _b64url(
        client_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    auth = os.urandom(16)
    received: list[tuple[dict[str, str], bytes]] = []

    async def push(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=201)

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=410)

    app = web.Application()
    app.router.add_post("/push/sub1", push)
    app.router.add_post("/push/gone", gone)
    async with LocalHTTP(app) as endpoint:
        gateway, client = await _serve_gateway(
            {
                "apps": {
                    "org.example.web": {
                        "type": "webpush",
                        "vapid_private_key_file": str(tmp_path / "vapid.pem"),
                        "vapid_contact": "mailto:admin@example.org",
                    }
                },
                "outbound": {"allow_addresses": ["127.0.0.1/32"]},
            }
        )
        device: dict[str, Any] = {
            "app_id": "org.example.web",
            "pushkey": p256dh,
            "data": {
                "endpoint": f"{endpoint.base_url}/push/sub1",
                "auth": _b64url(auth),
                "default_payload": {"from": "gateway"},
            },
            "tweaks": {"sound": "default"},
        }
        dead = {
            **device,
            "pushkey": p256dh + "",
            "data": {**device["data"], "endpoint": f"{endpoint.base_url}/push/gone"},
        }
        dead["pushkey"] = _b64url(
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        r = await client.post(NOTIFY, json=_notification(device, dead))
        assert r.status_code == 200, r.text
        assert r.json() == {"rejected": [dead["pushkey"]]}
        await client.aclose()
        await gateway.aclose()
    [(headers, body)] = received
    assert headers["Content-Encoding"] == "aes128gcm"
    assert headers["Urgency"] == "high" and int(headers["TTL"]) > 0
    payload = json.loads(
        http_ece.decrypt(body, private_key=client_key, auth_secret=auth, version="aes128gcm")
    )
    assert payload["event_id"] == "$ev1" and payload["room_id"] == "!room:example.org"
    assert payload["unread"] == 2 and payload["sender_display_name"] == "Alice"
    assert payload["content"]["body"] == "I'm floating" and payload["from"] == "gateway"
    # RFC 8292: "vapid t=<JWT>, k=<public key>", the JWT signed ES256 by that key.
    scheme, _, params = headers["Authorization"].partition(" ")
    assert scheme == "vapid"
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64url(fields["k"]))
    claims = jwt.decode(
        fields["t"], public, algorithms=["ES256"], audience=f"http://127.0.0.1:{endpoint.port}"
    )
    assert claims["sub"] == "mailto:admin@example.org"


async def test_webpush_refuses_private_endpoints_and_bad_keys(tmp_path: Path) -> None:
    vapid = Vapid02()
    vapid.generate_keys()
    vapid.save_key(str(tmp_path / "vapid.pem"))
    gateway, client = await _serve_gateway(
        {
            "apps": {
                "w": {
                    "type": "webpush",
                    "vapid_private_key_file": str(tmp_path / "vapid.pem"),
                    "vapid_contact": "mailto:a@example.org",
                }
            }
        }
    )
    devices = [
        {"app_id": "w", "pushkey": "k1", "data": {"endpoint": "http://127.0.0.1:9/p", "auth": "x"}},
        {"app_id": "w", "pushkey": "k2", "data": {}},
        {"app_id": "w", "pushkey": "k3", "data": {"endpoint": "ftp://example.org/p", "auth": "x"}},
    ]
    r = await client.post(NOTIFY, json=_notification(*devices))
    assert r.json() == {"rejected": ["k1", "k2", "k3"]}
    await client.aclose()
    await gateway.aclose()


async def test_webpush_endpoints_go_through_the_outbound_transport(tmp_path: Path) -> None:
    vapid = Vapid02()
    vapid.generate_keys()
    vapid.save_key(str(tmp_path / "vapid.pem"))
    p256dh = _b64url(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    received: list[str] = []

    async def push(request: web.Request) -> web.Response:
        received.append(request.headers["Host"])
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/push/sub1", push)
    config = {
        "apps": {
            "w": {
                "type": "webpush",
                "vapid_private_key_file": str(tmp_path / "vapid.pem"),
                "vapid_contact": "mailto:a@example.org",
            }
        }
    }
    dns = FakeResolver({"push.test": [["127.0.0.1"]]})
    async with LocalHTTP(app) as endpoint:
        device = {
            "app_id": "w",
            "pushkey": p256dh,
            "data": {"endpoint": f"{endpoint.base_url}/push/sub1", "auth": _b64url(os.urandom(16))},
        }
        by_name = {
            **device,
            "data": {**device["data"], "endpoint": f"http://push.test:{endpoint.port}/push/sub1"},
        }
        # Valid keys, a loopback endpoint, no allow list: refused without a connection.
        gateway = Gateway(parse_gateway_config(config), outbound=Outbound(AddressPolicy(), dns))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw"
        ) as client:
            r = await client.post(NOTIFY, json=_notification(device, by_name))
            assert r.json() == {"rejected": [p256dh, p256dh]}
        await gateway.aclose()
        assert received == []
        # Allowed: the name is resolved by the transport and connected at that address.
        allowed = Outbound(AddressPolicy(["127.0.0.1/32"]), dns)
        gateway = Gateway(parse_gateway_config(config), outbound=allowed)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw"
        ) as client:
            r = await client.post(NOTIFY, json=_notification(by_name))
            assert r.json() == {"rejected": []}
        await gateway.aclose()
        assert received == [f"push.test:{endpoint.port}"]


def test_old_allow_keys_stop_the_start_up() -> None:
    app = {"type": "webpush", "vapid_private_key": "x", "vapid_contact": "mailto:a@b.c"}
    with pytest.raises(GatewayConfigError, match="outbound.allow_addresses"):
        parse_gateway_config({"apps": {"w": {**app, "allow_private_endpoints": True}}})
    parsed = parse_gateway_config({"apps": {"w": {**app, "allow_private_endpoints": False}}})
    assert parsed.outbound.allow_addresses == ()
    # Served by the homeserver, the gateway takes the homeserver's list.
    listed = parse_gateway_config({"outbound": {"allow_addresses": ["127.0.0.1/32"]}})
    with pytest.raises(GatewayConfigError, match="homeserver's outbound.allow_addresses"):
        Gateway(listed, outbound=Outbound(AddressPolicy()))


# --- APNs -------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class FakeApns:
    """An HTTP/2-only TLS server answering as APNs does."""

    def __init__(self, cert: Path, key: Path, auth_key: ec.EllipticCurvePublicKey) -> None:
        self.port = free_port()
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.errors: list[str] = []
        self._auth_key = auth_key
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._context.set_alpn_protocols(["h2"])
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeApns:
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", self.port, ssl=self._context
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        headers: dict[int, dict[str, str]] = {}
        bodies: dict[int, bytes] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers[event.stream_id] = {
                            (k.decode() if isinstance(k, bytes) else k): (
                                v.decode() if isinstance(v, bytes) else v
                            )
                            for k, v in event.headers
                        }
                        bodies[event.stream_id] = b""
                    elif isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        status, body = self._answer(
                            headers[event.stream_id], bodies[event.stream_id]
                        )
                        conn.send_headers(
                            event.stream_id,
                            [
                                (":status", str(status)),
                                ("apns-id", "A1B2"),
                                ("content-length", str(len(body))),
                            ],
                        )
                        conn.send_data(event.stream_id, body, end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _answer(self, headers: dict[str, str], raw: bytes) -> tuple[int, bytes]:
        body = json.loads(raw)
        self.requests.append((headers, body))
        token = headers[":path"].removeprefix("/3/device/")
        scheme, _, provider_token = headers.get("authorization", "").partition(" ")
        try:
            assert headers[":method"] == "POST" and headers[":path"].startswith("/3/device/")
            assert scheme == "bearer"
            assert jwt.get_unverified_header(provider_token)["kid"] == "KEY123"
            claims = jwt.decode(provider_token, self._auth_key, algorithms=["ES256"])
            assert claims["iss"] == "TEAM123" and isinstance(claims["iat"], int)
            assert headers["apns-topic"] == "org.example.ios"
            assert headers["apns-push-type"] == "alert"
            assert headers["apns-priority"] in ("10", "5")
            assert isinstance(body["aps"], dict)
        except (AssertionError, KeyError, jwt.PyJWTError) as e:
            self.errors.append(repr(e))
            return 403, b'{"reason": "InvalidProviderToken"}'
        if token.startswith("dead"):
            return 410, b'{"reason": "Unregistered", "timestamp": 1}'
        if token.startswith("bad"):
            return 400, b'{"reason": "BadDeviceToken"}'
        return 200, b""


async def test_apns_http2_token_auth(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    auth_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "AuthKey.p8").write_bytes(
        auth_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    async with FakeApns(cert, key, auth_key.public_key()) as apns:
        gateway, client = await _serve_gateway(
            {
                "apps": {
                    "org.example.ios": {
                        "type": "apns",
                        "team_id": "TEAM123",
                        "key_id": "KEY123",
                        "key_file": str(tmp_path / "AuthKey.p8"),
                        "topic": "org.example.ios",
                        "base_url": f"https://127.0.0.1:{apns.port}",
                        "ca_file": str(cert),
                    }
                }
            }
        )
        token = bytes(range(32))
        devices: list[dict[str, Any]] = [
            {
                "app_id": "org.example.ios",
                "pushkey": base64.b64encode(token).decode(),
                "tweaks": {"sound": "default"},
            },
            {"app_id": "org.example.ios", "pushkey": "dead" + "0" * 60},
            {"app_id": "org.example.ios", "pushkey": "bad" + "0" * 61},
            {"app_id": "org.example.ios", "pushkey": "%%% not base64"},
        ]
        r = await client.post(NOTIFY, json=_notification(*devices))
        assert r.status_code == 200, r.text
        assert r.json() == {"rejected": [d["pushkey"] for d in devices[1:]]}
        await client.aclose()
        await gateway.aclose()
    assert apns.errors == []
    sent = {h[":path"]: b for h, b in apns.requests}
    body = sent[f"/3/device/{token.hex()}"]
    assert body["aps"]["alert"] == {"title": "Lunch", "body": "Alice: I'm floating"}
    assert body["aps"]["badge"] == 2 and body["aps"]["sound"] == "default"
    assert body["event_id"] == "$ev1" and body["room_id"] == "!room:example.org"


# --- FCM --------------------------------------------------------------------------------------


async def test_fcm_v1_service_account(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    port = free_port()
    token_uri = f"http://127.0.0.1:{port}/token"
    (tmp_path / "sa.json").write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "proj-1",
                "private_key_id": "kid-1",
                "private_key": pem,
                "client_email": "push@proj-1.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    errors: list[str] = []
    sent: list[dict[str, Any]] = []
    grants = 0

    async def token(request: web.Request) -> web.Response:
        nonlocal grants
        form = await request.post()
        try:
            assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
            assertion = str(form["assertion"])
            assert jwt.get_unverified_header(assertion)["kid"] == "kid-1"
            claims = jwt.decode(
                assertion, key.public_key(), algorithms=["RS256"], audience=token_uri
            )
            assert claims["iss"] == "push@proj-1.iam.gserviceaccount.com"
            assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
            assert 0 < claims["exp"] - claims["iat"] <= 3600
        except (AssertionError, KeyError, jwt.PyJWTError) as e:
            errors.append(repr(e))
            return web.json_response({"error": "invalid_grant"}, status=400)
        grants += 1
        return web.json_response(
            {"access_token": "ya29.token", "expires_in": 3599, "token_type": "Bearer"}
        )

    async def send(request: web.Request) -> web.Response:
        body = await request.json()
        if request.headers.get("Authorization") != "Bearer ya29.token":
            errors.append("bad bearer")
            return web.json_response({"error": {"code": 401}}, status=401)
        message = body["message"]
        if not all(isinstance(v, str) for v in message["data"].values()):
            errors.append("data values must be strings")
        sent.append(message)
        if message["token"] == "dead-token":
            return web.json_response(
                {
                    "error": {
                        "code": 404,
                        "status": "NOT_FOUND",
                        "message": "Requested entity not found",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                "errorCode": "UNREGISTERED",
                            }
                        ],
                    }
                },
                status=404,
            )
        if message["token"] == "busy-token":
            return web.json_response({"error": {"code": 503, "status": "UNAVAILABLE"}}, status=503)
        return web.json_response({"name": "projects/proj-1/messages/1"})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_post("/v1/projects/proj-1/messages:send", send)
    server = LocalHTTP(app)
    server.port, server.base_url = port, f"http://127.0.0.1:{port}"
    async with server:
        gateway, client = await _serve_gateway(
            {
                "apps": {
                    "org.example.android": {
                        "type": "fcm",
                        "service_account_file": str(tmp_path / "sa.json"),
                        "base_url": server.base_url,
                        "token_uri": token_uri,
                    }
                }
            }
        )
        devices = [
            {"app_id": "org.example.android", "pushkey": "live-token"},
            {"app_id": "org.example.android", "pushkey": "dead-token"},
        ]
        r = await client.post(NOTIFY, json=_notification(*devices))
        assert r.status_code == 200, r.text
        assert r.json() == {"rejected": ["dead-token"]}
        # A provider's passing failure: 502, so that the homeserver retries.
        r = await client.post(
            NOTIFY, json=_notification({"app_id": "org.example.android", "pushkey": "busy-token"})
        )
        assert r.status_code == 502
        await client.aclose()
        await gateway.aclose()
    assert errors == []
    assert grants == 1  # the access token is reused until it expires
    live = next(m for m in sent if m["token"] == "live-token")
    assert live["android"] == {"priority": "high"}
    assert live["data"]["event_id"] == "$ev1" and live["data"]["unread"] == "2"
    assert json.loads(live["data"]["content"]) == {"msgtype": "m.text", "body": "I'm floating"}
