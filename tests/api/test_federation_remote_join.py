"""Our user joining a room of another server, against a scripted resident server: a good
answer is stored and shown in /sync; forged signatures, power its senders do not have,
malformed templates and refusals are caught before anything is stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.events.format import compute_event_id, hash_and_sign_event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.federation.client import FederationError
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, register

V11 = KNOWN_ROOM_VERSIONS["11"]
ROOM = "!room:remote.test"
CAROL = "@carol:remote.test"
Fed = tuple[Homeserver, httpx.AsyncClient]


class ResidentRoom:
    """A v11 room on remote.test, built and signed with the remote's key."""

    def __init__(self, remote: FakeRemote) -> None:
        self.remote = remote
        self.events: dict[str, JsonDict] = {}
        self.state: dict[tuple[str, str], str] = {}
        self.last: str | None = None
        self.depth = 0
        self.add("m.room.create", "", {"room_version": "11"}, auth=[])
        self.add("m.room.member", CAROL, {"membership": "join"})
        self.add("m.room.power_levels", "", {"users": {CAROL: 100}})
        self.add("m.room.join_rules", "", {"join_rule": "public"})
        self.add("m.room.name", "", {"name": "Remote room"})

    def build(
        self,
        event_type: str,
        state_key: str,
        content: JsonDict,
        *,
        sender: str = CAROL,
        auth: list[str] | None = None,
        signer: FakeRemote | None = None,
    ) -> tuple[JsonDict, str]:
        if auth is None:
            auth = [
                self.state[k]
                for k in (
                    ("m.room.create", ""),
                    ("m.room.power_levels", ""),
                    ("m.room.member", sender),
                )
                if k in self.state
            ]
        self.depth += 1
        pdu: JsonDict = {
            "room_id": ROOM,
            "sender": sender,
            "type": event_type,
            "state_key": state_key,
            "content": content,
            "origin_server_ts": 1_000 + self.depth,
            "depth": self.depth,
            "prev_events": [self.last] if self.last else [],
            "auth_events": auth,
        }
        hash_and_sign_event(pdu, "remote.test", (signer or self.remote).key, V11)
        return pdu, compute_event_id(pdu, V11)

    def add(self, event_type: str, state_key: str, content: JsonDict, **kw: Any) -> str:
        pdu, event_id = self.build(event_type, state_key, content, **kw)
        self.events[event_id] = pdu
        self.state[(event_type, state_key)] = event_id
        self.last = event_id
        return event_id

    def template(self, user_id: str) -> JsonDict:
        return {
            "room_id": ROOM,
            "sender": user_id,
            "state_key": user_id,
            "type": "m.room.member",
            "content": {"membership": "join"},
            "origin_server_ts": 5_000,
            "depth": self.depth + 1,
            "prev_events": [self.last],
            "auth_events": [
                self.state[("m.room.create", "")],
                self.state[("m.room.power_levels", "")],
                self.state[("m.room.join_rules", "")],
            ],
        }

    def answer(self, event: JsonDict) -> JsonDict:
        state = [self.events[i] for i in self.state.values()]
        return {"state": state, "auth_chain": list(state), "event": event}


class ScriptedResident:
    """Stands in for the federation client: answers make_join and send_join."""

    def __init__(self, room: ResidentRoom) -> None:
        self.room = room
        self.make_join: Any = None  # None: the room's template
        self.send_join: Any = None  # None: the room's answer
        self.calls: list[tuple[str, str]] = []

    async def get_json(self, destination: str, path: str, **_: Any) -> Any:
        self.calls.append(("GET", path))
        if isinstance(self.make_join, Exception):
            raise self.make_join
        if self.make_join is not None:
            return self.make_join
        user = path.rsplit("/", 1)[1].replace("%40", "@").replace("%3A", ":")
        return {"room_version": "11", "event": self.room.template(user)}

    async def request(
        self, destination: str, method: str, path: str, *, content: Any = None, **_: Any
    ) -> Any:
        self.calls.append((method, path))
        if isinstance(self.send_join, Exception):
            raise self.send_join
        if callable(self.send_join):
            return self.send_join(content)
        if self.send_join is not None:
            return self.send_join
        return self.room.answer(content)


@pytest.fixture
def resident(fed: Fed, remote: FakeRemote) -> ScriptedResident:
    hs, _ = fed
    scripted = ScriptedResident(ResidentRoom(remote))
    hs.remote_rooms._client = scripted  # type: ignore[assignment]
    return scripted


async def join(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/_matrix/client/v3/join/" + ROOM.replace("!", "%21").replace(":", "%3A"),
        params={"via": "remote.test"},
        headers=auth_header(token),
    )


async def test_join_a_remote_room(fed: Fed, resident: ScriptedResident) -> None:
    hs, client = fed
    alice, token = await register(client, "alice")
    r = await client.get("/_matrix/client/v3/sync", headers=auth_header(token))
    since = r.json()["next_batch"]
    r = await join(client, token)
    assert r.status_code == 200, r.text
    assert r.json() == {"room_id": ROOM}
    # An incremental sync shows the newly joined room whole.
    r = await client.get(
        "/_matrix/client/v3/sync", params={"since": since}, headers=auth_header(token)
    )
    room = r.json()["rooms"]["join"][ROOM]
    types = {e["type"] for e in room["state"]["events"] + room["timeline"]["events"]}
    assert {"m.room.create", "m.room.name", "m.room.power_levels", "m.room.member"} <= types
    assert [c[0] for c in resident.calls] == ["GET", "PUT"]
    assert "/v2/send_join/" in resident.calls[1][1]
    r = await client.get("/_matrix/client/v3/sync", headers=auth_header(token))
    room = r.json()["rooms"]["join"][ROOM]
    everything = room["state"]["events"] + room["timeline"]["events"]
    assert {"name": "Remote room"} in [
        e["content"] for e in everything if e["type"] == "m.room.name"
    ]
    assert any(e["type"] == "m.room.member" and e["state_key"] == alice for e in everything)
    members = await client.get(
        f"/_matrix/client/v3/rooms/{ROOM}/joined_members", headers=auth_header(token)
    )
    assert set(members.json()["joined"]) == {alice, CAROL}
    # Alice can send into it (built on the join; sent to the other server by the sender of
    # transactions).
    r = await client.put(
        f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/1",
        headers=auth_header(token),
        json={"msgtype": "m.text", "body": "hello"},
    )
    assert r.status_code == 200, r.text


async def test_forged_or_powerless_state_is_refused(
    fed: Fed, resident: ScriptedResident, remote: FakeRemote
) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    room = resident.room
    # A power levels event signed by another key: dropped, and the join that cites it
    # cannot be checked, so nothing is stored.
    forged, forged_id = room.build(
        "m.room.power_levels", "", {"users": {CAROL: 100}}, signer=FakeRemote("remote.test")
    )
    good_pl = room.state[("m.room.power_levels", "")]

    def with_forged(event: JsonDict) -> JsonDict:
        answer = room.answer(event)
        answer["state"] = [
            forged if compute_event_id(e, V11) == good_pl else e for e in answer["state"]
        ]
        answer["auth_chain"] = list(answer["state"])
        return answer

    resident.send_join = with_forged
    r = await join(client, token)
    assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), r.text
    r = await client.get(
        f"/_matrix/client/v3/rooms/{ROOM}/joined_members", headers=auth_header(token)
    )
    assert r.status_code == 403, r.text

    # A power levels event by a user with no power: rejected by the auth chain checks.
    mallory = "@mallory:remote.test"
    powerless, powerless_id = room.build(
        "m.room.power_levels", "", {"users": {mallory: 100}}, sender=mallory
    )

    def with_powerless(event: JsonDict) -> JsonDict:
        answer = room.answer(event)
        answer["state"].append(powerless)
        answer["auth_chain"].append(powerless)
        return answer

    resident.send_join = with_powerless
    tampered = room.template("@alice:test")
    tampered["auth_events"][1] = powerless_id
    resident.make_join = {"room_version": "11", "event": tampered}
    r = await join(client, token)
    assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), r.text

    # Without the create event: refused.
    resident.make_join = None
    resident.send_join = lambda event: {
        **room.answer(event),
        "state": [e for e in room.answer(event)["state"] if e["type"] != "m.room.create"],
        "auth_chain": [],
    }
    r = await join(client, token)
    assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), r.text


async def test_bad_templates_and_refusals(fed: Fed, resident: ScriptedResident) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    room = resident.room
    other = room.template("@someone:test")
    leave = room.template("@alice:test")
    leave["content"] = {"membership": "leave"}
    wrong_room = room.template("@alice:test")
    wrong_room["room_id"] = "!other:remote.test"
    for made in (
        {"room_version": "11", "event": other},
        {"room_version": "11", "event": leave},
        {"room_version": "11", "event": wrong_room},
        {"room_version": "1", "event": room.template("@alice:test")},
        {"room_version": "11"},
        ["not", "an", "object"],
    ):
        resident.make_join = made
        r = await join(client, token)
        assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), (made, r.text)
    resident.make_join = FederationError(
        "remote.test", "answered 403", status=403, errcode="M_FORBIDDEN"
    )
    r = await join(client, token)
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), r.text
    resident.make_join = FederationError(
        "remote.test", "answered 400", status=400, errcode="M_INCOMPATIBLE_ROOM_VERSION"
    )
    r = await join(client, token)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION"), r.text
    resident.make_join = None
    resident.send_join = {"state": "nope"}
    r = await join(client, token)
    assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), r.text
    # No server to ask: the room ID names remote.test, which is asked then.
    resident.send_join = None
    r = await client.post("/_matrix/client/v3/join/" + "%21x%3Atest", headers=auth_header(token))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text
    # A remote alias whose server cannot be reached: 404.
    r = await client.post(
        "/_matrix/client/v3/join/" + "%23lobby%3Anowhere.test", headers=auth_header(token)
    )
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text


async def test_concurrent_joins_go_to_the_resident_server_once(
    fed: Fed, resident: ScriptedResident
) -> None:
    import asyncio

    _, client = fed
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    first, second = await asyncio.gather(join(client, alice_token), join(client, bob_token))
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    # One make_join and one send_join: the second user joined on this server's copy.
    assert [c[0] for c in resident.calls] == ["GET", "PUT"]
    members = await client.get(
        f"/_matrix/client/v3/rooms/{ROOM}/joined_members", headers=auth_header(alice_token)
    )
    assert set(members.json()["joined"]) == {alice, bob, CAROL}
