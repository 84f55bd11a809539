"""Fake remote servers for federation tests: their keys, key responses, signed requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.types import JsonDict
from homeserver.federation.client import FederationError, x_matrix_header
from homeserver.federation.discovery import ServerResolver, WellKnownResolver
from homeserver.net.addresses import AddressPolicy, IPAddress
from homeserver.net.outbound import Outbound
from tests.conftest import make_config
from tests.helpers import serve

DAY_MS = 24 * 3600 * 1000


class FakeRemote:
    """A server we only know by its keys: it signs key responses and requests."""

    def __init__(self, server_name: str, version: str = "r1") -> None:
        self.server_name = server_name
        self.key = generate_signing_key(version)
        self.old_keys: dict[str, JsonDict] = {}

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.key.version}"

    @property
    def verify_key(self) -> str:
        return str(encode_verify_key_base64(get_verify_key(self.key)))

    def rotate(self, version: str, expired_ts: int) -> None:
        self.old_keys[self.key_id] = {"key": self.verify_key, "expired_ts": expired_ts}
        self.key = generate_signing_key(version)

    def key_response(self, valid_until_ts: int) -> JsonDict:
        response: JsonDict = {
            "server_name": self.server_name,
            "valid_until_ts": valid_until_ts,
            "verify_keys": {self.key_id: {"key": self.verify_key}},
            "old_verify_keys": dict(self.old_keys),
        }
        return self.sign(response)

    def sign(self, obj: JsonDict) -> JsonDict:
        signed: JsonDict = sign_json(obj, self.server_name, self.key)
        return signed

    def authorization(
        self,
        destination: str | None,
        method: str,
        uri: str,
        content: Any = None,
        signed_destination: str | None = None,
    ) -> str:
        """An X-Matrix header; ``signed_destination`` signs another name than the header's."""
        obj: JsonDict = {
            "method": method,
            "uri": uri,
            "origin": self.server_name,
            "destination": signed_destination or destination,
        }
        if content is not None:
            obj["content"] = content
        sig = self.sign(obj)["signatures"][self.server_name][self.key_id]
        header = x_matrix_header(self.server_name, destination or "", self.key_id, sig)
        if destination is None:
            header = header.replace(',destination=""', "")
        return header


class FakeFederation:
    """Stands in for FederationClient: answers from fake remotes and notaries."""

    def __init__(self) -> None:
        self.key_responses: dict[str, JsonDict | Exception] = {}
        self.notary_answers: dict[str, JsonDict | Exception] = {}
        self.calls: list[tuple[str, str, str]] = []

    async def get_json(self, destination: str, path: str, **_: Any) -> Any:
        self.calls.append((destination, "GET", path))
        answer = self.key_responses.get(destination)
        if answer is None:
            raise FederationError(destination, "unreachable")
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def request(
        self, destination: str, method: str, path: str, *, content: Any = None, **_: Any
    ) -> Any:
        self.calls.append((destination, method, path))
        answer = self.notary_answers.get(destination)
        if answer is None:
            raise FederationError(destination, "unreachable")
        if isinstance(answer, Exception):
            raise answer
        return answer


async def _no_dns(host: str, port: int) -> list[IPAddress]:
    raise OSError("no DNS in tests")


async def _no_well_known(hostname: str) -> Any:
    from homeserver.net.outbound import OutboundError, Reason

    raise OutboundError(Reason.UNREACHABLE, "no network in tests")


async def _no_srv(name: str) -> list[Any]:
    return []


async def served_offline(
    tmp_path: Path, db_url: str, clock: FakeClock, **overrides: object
) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient]]:
    """A homeserver with no network: other servers are known only by the keys tests store."""
    config = make_config(tmp_path, db_url, **overrides)
    async with serve(
        config,
        clock,
        outbound=Outbound(AddressPolicy(), resolver=_no_dns),
        server_resolver=ServerResolver(WellKnownResolver(_no_well_known, clock), _no_srv),
    ) as (hs, client):
        yield hs, client
