"""Application service registrations: the files the operator lists in
``app_service_config_files``, read and checked once at start-up, and the questions the
rest of the server asks of them (whose token is this, who owns this user, room or alias).

A file that cannot be used (a missing field, a bad regex, a token or ID another file has
already taken) stops the start-up with a message naming the file: a bridge that silently
does not work is worse than a server that does not start.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from homeserver.core.config import ConfigError
from homeserver.core.ids import MAX_ID_BYTES, UserID, is_valid_new_localpart

NAMESPACE_KINDS = ("users", "aliases", "rooms")
# MSC2409's name for receive_ephemeral, still written by bridges made before spec v1.13.
UNSTABLE_EPHEMERAL = "de.sorunome.msc2409.push_ephemeral"
# MSC3202's opt-in to device-list and key-count extensions: read, not acted on (device
# masquerading works for every service).
MSC3202 = "org.matrix.msc3202"


class RegistrationError(ConfigError):
    """A registration file that the server cannot use; the message names the file."""


@dataclass(frozen=True, slots=True)
class Namespace:
    exclusive: bool
    regex: re.Pattern[str]

    def matches(self, value: str) -> bool:
        # spec: the regex is matched against the whole ID.
        return self.regex.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class AppService:
    """One registration, checked."""

    id: str
    url: str | None  # None: the service gets no transactions and no queries
    as_token: str
    hs_token: str
    sender: UserID
    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()
    rate_limited: bool = True
    receive_ephemeral: bool = False
    msc3202: bool = False  # asked for MSC3202's transaction extensions (not sent)
    protocols: tuple[str, ...] = ()
    source: str = field(default="", compare=False)

    def is_user_in_namespace(self, user_id: str) -> bool:
        """The service's sender or a user of its namespaces (exclusive or not)."""
        return user_id == self.sender or any(ns.matches(user_id) for ns in self.users)

    def is_exclusive_user(self, user_id: str) -> bool:
        return user_id == self.sender or any(
            ns.exclusive and ns.matches(user_id) for ns in self.users
        )

    def is_alias_in_namespace(self, alias: str) -> bool:
        return any(ns.matches(alias) for ns in self.aliases)

    def is_exclusive_alias(self, alias: str) -> bool:
        return any(ns.exclusive and ns.matches(alias) for ns in self.aliases)

    def is_room_in_namespace(self, room_id: str) -> bool:
        return any(ns.matches(room_id) for ns in self.rooms)


def _fail(source: str, message: str) -> RegistrationError:
    return RegistrationError(f"application service registration {source}: {message}")


def _string(data: dict[str, Any], key: str, source: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(source, f"'{key}' must be a non-empty string")
    return value


def _flag(data: dict[str, Any], key: str, source: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(source, f"'{key}' must be true or false")
    return value


def _namespaces(data: Any, kind: str, source: str) -> tuple[Namespace, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise _fail(source, f"namespaces.{kind} must be a list")
    found = []
    for i, entry in enumerate(data):
        where = f"namespaces.{kind}[{i}]"
        if not isinstance(entry, dict):
            raise _fail(source, f"{where} must be an object with 'exclusive' and 'regex'")
        regex, exclusive = entry.get("regex"), entry.get("exclusive")
        if not isinstance(regex, str) or not regex:
            raise _fail(source, f"{where}.regex must be a non-empty string")
        if not isinstance(exclusive, bool):
            raise _fail(source, f"{where}.exclusive must be true or false")
        try:
            compiled = re.compile(regex)
        except re.error as e:
            raise _fail(source, f"{where}.regex {regex!r} is not a valid regex: {e}") from None
        found.append(Namespace(exclusive, compiled))
    return tuple(found)


def parse_registration(data: Any, server_name: str, source: str) -> AppService:
    """One registration from its YAML (already loaded); RegistrationError if unusable."""
    if not isinstance(data, dict):
        raise _fail(source, "the top level must be a mapping")
    service_id = _string(data, "id", source)
    as_token = _string(data, "as_token", source)
    hs_token = _string(data, "hs_token", source)
    localpart = _string(data, "sender_localpart", source)
    if as_token == hs_token:
        raise _fail(source, "as_token and hs_token must differ")
    # 'url' must be given, as a URL or as null: a missing one is more likely a mistake than a
    # wish to receive nothing (Synapse asks the same).
    if "url" not in data:
        raise _fail(source, "'url' must be given (null: the service receives nothing)")
    url = data["url"]
    if url is not None:
        if not isinstance(url, str) or not re.match(r"https?://[^/?#\s]+", url):
            raise _fail(source, "'url' must be an http(s) URL or null")
        url = url.rstrip("/")
    if quote(localpart) != localpart or not is_valid_new_localpart(localpart):
        raise _fail(source, f"sender_localpart {localpart!r} is not a valid user ID localpart")
    sender = UserID.of(localpart, server_name)
    if len(sender.encode()) > MAX_ID_BYTES:
        raise _fail(source, "sender_localpart makes a user ID that is too long")
    namespaces = data.get("namespaces")
    if not isinstance(namespaces, dict):
        raise _fail(source, "'namespaces' must be an object (users, aliases, rooms)")
    unknown = set(namespaces) - set(NAMESPACE_KINDS)
    if unknown:
        raise _fail(source, f"unknown namespaces: {', '.join(sorted(unknown))}")
    protocols = data.get("protocols") or []
    if not isinstance(protocols, list) or not all(isinstance(p, str) and p for p in protocols):
        raise _fail(source, "'protocols' must be a list of strings")
    ephemeral = _flag(data, "receive_ephemeral", source, False) or _flag(
        data, UNSTABLE_EPHEMERAL, source, False
    )
    rate_limited = data.get("rate_limited", True)
    if not isinstance(rate_limited, bool):
        raise _fail(source, "'rate_limited' must be true or false")
    return AppService(
        id=service_id,
        url=url,
        as_token=as_token,
        hs_token=hs_token,
        sender=sender,
        users=_namespaces(namespaces.get("users"), "users", source),
        aliases=_namespaces(namespaces.get("aliases"), "aliases", source),
        rooms=_namespaces(namespaces.get("rooms"), "rooms", source),
        rate_limited=rate_limited,
        receive_ephemeral=ephemeral,
        msc3202=_flag(data, MSC3202, source, False),
        protocols=tuple(protocols),
        source=source,
    )


def check_unique(services: Sequence[AppService]) -> None:
    """Two registrations may not share an ID, a token or a sender."""
    seen: dict[str, str] = {}
    for service in services:
        for what, value in (
            ("id", service.id),
            ("as_token", service.as_token),
            ("hs_token", service.hs_token),
            ("sender_localpart", service.sender),
        ):
            key = f"{what}:{value}"
            if key in seen:
                raise RegistrationError(
                    f"application service registrations {seen[key]} and {service.source} "
                    f"share the same {what}"
                )
            seen[key] = service.source
        if service.as_token == service.hs_token:
            raise _fail(service.source, "as_token and hs_token must differ")
    tokens = [s.as_token for s in services]
    for service in services:
        if service.hs_token in tokens:
            raise _fail(service.source, "its hs_token is another service's as_token")


def load_registrations(paths: Iterable[str], server_name: str) -> list[AppService]:
    """Every registration file, read and checked; RegistrationError for the first unusable."""
    services = []
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise _fail(path, f"cannot be read: {e}") from None
        services.append(parse_registration(data, server_name, path))
    check_unique(services)
    return services


class AppServices:
    """The registered application services and the questions asked of all of them."""

    def __init__(self, services: Sequence[AppService]) -> None:
        check_unique(services)
        self.all: tuple[AppService, ...] = tuple(services)
        self._by_token = {s.as_token: s for s in services}
        self._by_id = {s.id: s for s in services}

    def __bool__(self) -> bool:
        return bool(self.all)

    def by_token(self, as_token: str) -> AppService | None:
        return self._by_token.get(as_token)

    def by_id(self, service_id: str) -> AppService | None:
        return self._by_id.get(service_id)

    def exclusive_owner_of_user(self, user_id: str) -> AppService | None:
        """The service that claims the user ID exclusively (or has it as its sender)."""
        for service in self.all:
            if service.is_exclusive_user(user_id):
                return service
        return None

    def exclusive_owner_of_alias(self, alias: str) -> AppService | None:
        for service in self.all:
            if service.is_exclusive_alias(alias):
                return service
        return None

    def services_for_user_query(self, user_id: str) -> list[AppService]:
        """Services to ask about an unknown user: those whose namespaces hold it."""
        return [s for s in self.all if s.url is not None and s.is_user_in_namespace(user_id)]

    def services_for_alias_query(self, alias: str) -> list[AppService]:
        return [s for s in self.all if s.url is not None and s.is_alias_in_namespace(alias)]

    def services_for_protocol(self, protocol: str) -> list[AppService]:
        return [s for s in self.all if s.url is not None and protocol in s.protocols]
