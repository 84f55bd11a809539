"""Which rooms concern an application service: namespaced members, aliases, room IDs."""

from __future__ import annotations

from homeserver.appservice.registration import parse_registration
from homeserver.appservice.sender import RoomFacts, backoff_ms
from homeserver.core.config import AppServiceConfig
from tests.appservice_helpers import registration

SERVICE = parse_registration(
    registration(
        "http://127.0.0.1:9",
        namespaces={
            "users": [{"exclusive": True, "regex": "@bridge_.*:test"}],
            "aliases": [{"exclusive": False, "regex": "#irc_.*:test"}],
            "rooms": [{"exclusive": False, "regex": "!bridged[0-9]+:test"}],
        },
    ),
    "test",
    "bridge.yaml",
)


def test_a_room_concerns_the_service_by_member_alias_or_id() -> None:
    facts = RoomFacts(
        members={"!a:test": ["@alice:test", "@bridge_bob:test"], "!b:test": ["@alice:test"]},
        aliases={"!c:test": ["#irc_general:test"], "!d:test": ["#other:test"]},
    )
    assert facts.concerns(SERVICE, "!a:test")
    assert not facts.concerns(SERVICE, "!b:test")
    assert facts.concerns(SERVICE, "!c:test")
    assert not facts.concerns(SERVICE, "!d:test")
    assert facts.concerns(SERVICE, "!bridged42:test")
    assert not facts.concerns(SERVICE, "!bridged42x:test")
    # The sender counts as one of its users.
    assert RoomFacts({"!e:test": ["@bridgebot:test"]}, {}).concerns(SERVICE, "!e:test")


def test_back_off_doubles_up_to_the_maximum() -> None:
    config = AppServiceConfig(retry_initial_ms=1000, retry_max_ms=5000)
    assert [backoff_ms(n, config) for n in range(1, 6)] == [1000, 2000, 4000, 5000, 5000]
    assert backoff_ms(10_000, config) == 5000
