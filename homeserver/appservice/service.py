"""What clients ask of application services through the homeserver: the ping, unknown users
and aliases in their namespaces, and the third-party protocol lookups (spec: Application
Service API and Client-Server "Third-party networks")."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from homeserver.appservice.client import AppServiceClient, ServiceUnavailable
from homeserver.appservice.registration import AppService, AppServices
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.accounts import AccountStore, Profile

logger = logging.getLogger(__name__)

# A body of the service's that a client sees in M_BAD_STATUS, cut to this many characters.
MAX_ECHOED_BODY_CHARS = 1000
MAX_TRANSACTION_ID_CHARS = 255
THIRDPARTY_KINDS = ("location", "user")


class AppServiceQueries:
    def __init__(
        self, services: AppServices, client: AppServiceClient, accounts: AccountStore
    ) -> None:
        self.services = services
        self._client = client
        self._accounts = accounts

    # --- ping (spec v1.7) ---------------------------------------------------------------

    async def ping(self, requester: Requester, service_id: str, transaction_id: str | None) -> int:
        """POST /_matrix/client/v1/appservice/{appserviceId}/ping: the service's round trip."""
        service = self.services.by_id(service_id)
        if service is None or requester.app_service_id != service_id:
            # spec: 403 when the token is not the service's (an unknown ID is no other case).
            raise MatrixError(Codes.FORBIDDEN, "This access token is not the application service's")
        if transaction_id is not None and len(transaction_id) > MAX_TRANSACTION_ID_CHARS:
            raise MatrixError(Codes.INVALID_PARAM, "transaction_id is too long")
        if service.url is None:
            raise MatrixError(Codes.URL_NOT_SET, "The application service has no URL")
        body: JsonDict = {}
        if transaction_id is not None:
            body["transaction_id"] = transaction_id
        try:
            answer = await self._client.request(service, "POST", "/ping", body=body)
        except ServiceUnavailable as e:
            if e.reason == "timeout":
                raise MatrixError(
                    Codes.CONNECTION_TIMEOUT, "The application service did not answer in time"
                ) from None
            raise MatrixError(
                Codes.CONNECTION_FAILED, "The application service could not be reached"
            ) from None
        if answer.status != 200:
            error = MatrixError(
                Codes.BAD_STATUS,
                "The application service answered with an error",
                body=answer.raw.decode("utf-8", "replace")[:MAX_ECHOED_BODY_CHARS],
            )
            # spec: the service's status in the error's "status" (not the response's, 502).
            error.extra["status"] = answer.status
            raise error
        return answer.duration_ms

    # --- unknown users and aliases ---------------------------------------------------------

    async def get_profile(self, user_id: UserID) -> Profile | None:
        """A local user's profile; an unknown user in a service's namespace is asked of the
        service first (it may create the user), then looked up again."""
        profile = await self._accounts.get_profile(user_id)
        if profile is not None or not self.services:
            return profile
        for service in self.services.services_for_user_query(user_id):
            if await self._client.query_user(service, user_id):
                profile = await self._accounts.get_profile(user_id)
                if profile is not None:
                    return profile
        return None

    async def query_alias(self, alias: str) -> bool:
        """Ask the services whose namespaces hold an unknown alias; True when one says it
        created the room (the caller looks the alias up again)."""
        for service in self.services.services_for_alias_query(alias):
            if await self._client.query_alias(service, alias):
                return True
        return False

    def check_alias_allowed(self, requester: Requester, alias: str) -> None:
        """M_EXCLUSIVE for an alias another service (or a user) may not take."""
        owner = self.services.exclusive_owner_of_alias(alias)
        if owner is not None and requester.app_service_id != owner.id:
            raise MatrixError(
                Codes.EXCLUSIVE, "This room alias is reserved by an application service"
            )

    # --- third-party networks --------------------------------------------------------------

    async def protocols(self) -> JsonDict:
        """GET /thirdparty/protocols: every protocol some service declares and describes."""
        names = sorted({p for s in self.services.all if s.url is not None for p in s.protocols})
        found: JsonDict = {}
        for name in names:
            info = await self._protocol_info(name)
            if info is not None:
                found[name] = info
        return found

    async def protocol(self, name: str) -> JsonDict:
        info = await self._protocol_info(name)
        if info is None:
            raise MatrixError(Codes.NOT_FOUND, f"Unknown protocol {name}")
        return info

    async def _protocol_info(self, name: str) -> JsonDict | None:
        """The services' descriptions of a protocol, merged: the first one's fields, and the
        instances of all of them (each with the ID of the service that bridges it)."""
        merged: JsonDict | None = None
        for service in self.services.services_for_protocol(name):
            answer = await self._get_json(service, f"/thirdparty/protocol/{_seg(name)}", None)
            if not isinstance(answer, dict):
                continue
            instances = []
            for n, given in enumerate(answer.get("instances") or []):
                if not isinstance(given, dict):
                    continue
                instance = {"fields": {}, "network_id": service.id, **given}
                # spec: an instance_id is unique across all instances: the service's ID in front.
                instance.setdefault("instance_id", f"{service.id}|{instance['network_id']}|{n}")
                instances.append(instance)
            if merged is None:
                merged = {**answer, "instances": instances}
            else:
                merged["instances"] = [*merged["instances"], *instances]
        return merged

    async def lookup(self, kind: str, protocol: str, fields: dict[str, str]) -> list[JsonDict]:
        """GET /thirdparty/{location,user}/{protocol}: the services' answers, concatenated."""
        assert kind in THIRDPARTY_KINDS
        services = self.services.services_for_protocol(protocol)
        if not services:
            raise MatrixError(Codes.NOT_FOUND, f"Unknown protocol {protocol}")
        found: list[JsonDict] = []
        for service in services:
            answer = await self._get_json(service, f"/thirdparty/{kind}/{_seg(protocol)}", fields)
            found.extend(_objects(answer))
        return found

    async def reverse_lookup(self, kind: str, key: str, value: str) -> list[JsonDict]:
        """GET /thirdparty/location?alias= and /thirdparty/user?userid=: every service that
        declares a protocol is asked (the answer names the protocol)."""
        assert kind in THIRDPARTY_KINDS
        found: list[JsonDict] = []
        for service in self.services.all:
            if service.url is None or not service.protocols:
                continue
            answer = await self._get_json(service, f"/thirdparty/{kind}", {key: value})
            found.extend(_objects(answer))
        return found

    async def _get_json(self, service: AppService, path: str, query: dict[str, str] | None) -> Any:
        """The service's JSON answer; None when it failed (one service down does not fail
        the lookup of the others)."""
        try:
            answer = await self._client.request(service, "GET", path, query=query)
        except ServiceUnavailable:
            return None
        if answer.status != 200:
            return None
        return answer.body


def _seg(value: str) -> str:
    return quote(value, safe="")


def _objects(answer: Any) -> list[JsonDict]:
    if not isinstance(answer, list):
        return []
    return [item for item in answer if isinstance(item, dict)]
