"""Rooms of versions 1 and 2 across servers (event IDs ``$opaque:server`` chosen by the
sending server, ``[id, {sha256}]`` references), and the deprecated v1 forms of send_join,
send_leave and invite, served and fallen back to: a remote server's user joining and leaving
our v1 and v2 rooms, a v1 invite of our user, and our users joining, inviting into and
declining rooms of a scripted resident server that only knows the v1 endpoints."""

from __future__ import annotations

import copy
import secrets
from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.events.format import (
    compute_reference_hash,
    event_id_of,
    hash_and_sign_event,
)
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.federation.client import FederationError
from tests.api.test_federation_rooms import FED, make, q, signed, sync
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, create_room, register

Fed = tuple[Homeserver, httpx.AsyncClient]
BOB = "@bob:remote.test"
CAROL = "@carol:remote.test"
REMOTE_ROOM = "!old:remote.test"


def sign_v1(remote: FakeRemote, template: JsonDict, version: str = "1") -> tuple[JsonDict, str]:
    """The joining (or leaving) server's part for a v1-v2 template: its own event ID."""
    pdu = copy.deepcopy(template)
    pdu.pop("event_id", None)
    pdu["origin"] = remote.server_name
    pdu["event_id"] = f"${secrets.token_urlsafe(9)}:{remote.server_name}"
    room_version = KNOWN_ROOM_VERSIONS[version]
    hash_and_sign_event(pdu, remote.server_name, remote.key, room_version)
    return pdu, pdu["event_id"]


async def members(client: httpx.AsyncClient, token: str, room_id: str) -> set[str]:
    r = await client.get(
        f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members", headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    return set(r.json()["joined"])


@pytest.mark.parametrize("version", ["1", "2"])
async def test_remote_user_joins_and_leaves_our_old_room(
    fed: Fed, remote: FakeRemote, version: str
) -> None:
    _, client = fed
    alice, token = await register(client, "alice")
    room_id = await create_room(client, token, preset="public_chat", room_version=version)
    room_version = KNOWN_ROOM_VERSIONS[version]
    path = f"{FED}/v1/make_join/{q(room_id)}/{q(BOB)}"
    if version == "1":
        # Without ``ver`` a server supports version 1 only: enough for this room.
        r = await signed(client, remote, "GET", path)
        assert r.status_code == 200, r.text
    else:
        r = await signed(client, remote, "GET", path)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    made = await make(client, remote, "join", room_id, BOB)
    assert made["room_version"] == version
    template = made["event"]
    # References of this version: [ID, {"sha256": reference hash}] pairs.
    for key in ("prev_events", "auth_events"):
        assert template[key] and all(
            isinstance(ref, list) and ref[0].endswith(":test") and set(ref[1]) == {"sha256"}
            for ref in template[key]
        ), template[key]
    pdu, join_id = sign_v1(remote, template, version)

    # Bad inputs first: nothing of them is stored.
    send_join = f"{FED}/v2/send_join/{q(room_id)}"
    no_id = {k: v for k, v in pdu.items() if k != "event_id"}
    ours, ours_id = copy.deepcopy(pdu), f"$stolen:{'test'}"
    ours["event_id"] = ours_id
    for name, body, event_id, status, errcode in (
        ("the path names another ID", pdu, "$other:remote.test", 400, "M_BAD_JSON"),
        ("no event_id", no_id, join_id, 400, "M_BAD_JSON"),
        ("an ID on our server, unsigned by us", ours, ours_id, 403, "M_FORBIDDEN"),
    ):
        r = await signed(client, remote, "PUT", f"{send_join}/{q(event_id)}", content=body)
        assert (r.status_code, r.json().get("errcode")) == (status, errcode), (name, r.text)
    assert await members(client, token, room_id) == {alice}

    # The deprecated v1 send_join: the v2 answer inside [200, {...}].
    r = await signed(
        client, remote, "PUT", f"{FED}/v1/send_join/{q(room_id)}/{q(join_id)}", content=pdu
    )
    assert r.status_code == 200, r.text
    code, answer = r.json()
    assert code == 200
    assert answer["origin"] == "test"
    assert answer["event"]["event_id"] == join_id
    assert set(answer["event"]["signatures"]) == {"remote.test", "test"}
    state = {(e["type"], e["state_key"]): e for e in answer["state"]}
    assert ("m.room.create", "") in state and ("m.room.member", alice) in state
    assert all(e["event_id"].endswith(":test") for e in answer["state"] + answer["auth_chain"])
    # Every reference the template held is the hash of an event the answer gives.
    given = {e["event_id"]: e for e in answer["state"] + answer["auth_chain"]}
    for ref_id, hashes in template["auth_events"]:
        from unpaddedbase64 import encode_base64

        assert hashes["sha256"] == encode_base64(
            compute_reference_hash(given[ref_id], room_version)
        )
    assert await members(client, token, room_id) == {alice, BOB}
    timeline = (await sync(client, token))["rooms"]["join"][room_id]["timeline"]["events"]
    assert join_id in [e["event_id"] for e in timeline]

    # Alice's next event is built on bob's join, in this version's format.
    r = await client.put(
        f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/1",
        headers=auth_header(token),
        json={"msgtype": "m.text", "body": "hello bob"},
    )
    assert r.status_code == 200, r.text
    r = await signed(client, remote, "GET", f"{FED}/v1/event/{q(r.json()['event_id'])}")
    assert r.status_code == 200, r.text
    assert [ref[0] for ref in r.json()["pdus"][0]["prev_events"]] == [join_id]

    # Bob leaves through the deprecated v1 send_leave: [200, {}].
    made = await make(client, remote, "leave", room_id, BOB)
    leave, leave_id = sign_v1(remote, made["event"], version)
    r = await signed(
        client, remote, "PUT", f"{FED}/v1/send_leave/{q(room_id)}/{q(leave_id)}", content=leave
    )
    assert r.status_code == 200, r.text
    assert r.json() == [200, {}]
    assert await members(client, token, room_id) == {alice}

    # And joins again through v2, which answers an object.
    made = await make(client, remote, "join", room_id, BOB)
    again, again_id = sign_v1(remote, made["event"], version)
    r = await signed(client, remote, "PUT", f"{send_join}/{q(again_id)}", content=again)
    assert r.status_code == 200, r.text
    assert r.json()["event"]["event_id"] == again_id
    assert await members(client, token, room_id) == {alice, BOB}


async def test_v1_send_join_and_leave_refuse_bad_input(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    room_id = await create_room(client, token, preset="public_chat")
    made = await make(client, remote, "join", room_id, BOB)
    for endpoint in ("send_join", "send_leave"):
        path = f"{FED}/v1/{endpoint}/{q(room_id)}/{q('$x')}"
        r = await signed(client, remote, "PUT", path, content=made["event"])
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), r.text
        r = await signed(client, remote, "PUT", path, content=[1, 2])
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), r.text
        # Unsigned requests are refused like every federation request.
        r = await client.put(path, json=made["event"])
        assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED"), r.text
        r = await signed(
            client,
            remote,
            "PUT",
            f"{FED}/v1/{endpoint}/{q('!nope:test')}/{q('$x')}",
            content=made["event"],
        )
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text


def v1_invite(remote: FakeRemote, invitee: str, version: str = "1") -> tuple[JsonDict, str]:
    pdu: JsonDict = {
        "room_id": REMOTE_ROOM,
        "sender": CAROL,
        "state_key": invitee,
        "type": "m.room.member",
        "content": {"membership": "invite"},
        "origin_server_ts": 1_000,
        "depth": 5,
        "prev_events": [["$parent:remote.test", {"sha256": "aGFzaA"}]],
        "auth_events": [["$power:remote.test", {"sha256": "aGFzaA"}]],
    }
    return sign_v1(remote, pdu, version)


async def test_v1_invite_of_our_user(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    alice, token = await register(client, "alice")
    await sync(client, token)
    pdu, event_id = v1_invite(remote, alice, "2")
    stripped_state = [
        {
            "type": "m.room.create",
            "state_key": "",
            "sender": CAROL,
            "content": {"creator": CAROL, "room_version": "2"},
        },
        {"type": "m.room.name", "state_key": "", "sender": CAROL, "content": {"name": "Old"}},
    ]
    body = {**pdu, "unsigned": {"invite_room_state": stripped_state}}
    path = f"{FED}/v1/invite/{q(REMOTE_ROOM)}/{q(event_id)}"

    # Bad inputs: a clear error each, nothing stored.
    tampered = copy.deepcopy(body)
    tampered["content"]["displayname"] = "changed after signing"
    for name, content, status, errcode in (
        ("not an object", [body], 400, "M_BAD_JSON"),
        (
            "invite_room_state not a list",
            {**body, "unsigned": {"invite_room_state": 1}},
            400,
            "M_BAD_JSON",
        ),
        ("unsigned not an object", {**body, "unsigned": []}, 400, "M_BAD_JSON"),
        ("no event_id", {k: v for k, v in body.items() if k != "event_id"}, 400, "M_BAD_JSON"),
        ("content changed", tampered, 400, "M_BAD_JSON"),
        ("a join", {**body, "content": {"membership": "join"}}, 400, "M_BAD_JSON"),
    ):
        r = await signed(client, remote, "PUT", path, content=content)
        assert (r.status_code, r.json().get("errcode")) == (status, errcode), (name, r.text)
    r = await signed(
        client, remote, "PUT", f"{FED}/v1/invite/{q(REMOTE_ROOM)}/{q('$x')}", content=body
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), r.text
    assert REMOTE_ROOM not in (await sync(client, token)).get("rooms", {}).get("invite", {})

    r = await signed(client, remote, "PUT", path, content=body)
    assert r.status_code == 200, r.text
    code, answer = r.json()
    assert code == 200
    signed_event = answer["event"]
    assert signed_event["event_id"] == event_id
    assert set(signed_event["signatures"]) == {"remote.test", "test"}
    # Untouched otherwise (spec: only the invited server's signature is added).
    strip = ("signatures",)
    assert {k: v for k, v in signed_event.items() if k not in strip} == {
        k: v for k, v in body.items() if k not in strip
    }
    invite = (await sync(client, token))["rooms"]["invite"][REMOTE_ROOM]
    state = invite["invite_state"]["events"]
    assert {"name": "Old"} in [e["content"] for e in state if e["type"] == "m.room.name"]


# --- our users and a resident server that knows only the v1 endpoints ---------------------


class OldResidentRoom:
    """A room of version 1 or 2 on remote.test, its events named and signed there."""

    def __init__(self, remote: FakeRemote, version: str = "1", room_id: str = REMOTE_ROOM) -> None:
        self.remote = remote
        self.room_id = room_id
        self.version = KNOWN_ROOM_VERSIONS[version]
        self.events: dict[str, JsonDict] = {}
        self.state: dict[tuple[str, str], str] = {}
        self.last: str | None = None
        self.depth = 0
        create: JsonDict = {"creator": CAROL}
        if version != "1":
            create["room_version"] = version
        self.add("m.room.create", "", create, auth=[])
        self.add("m.room.member", CAROL, {"membership": "join"})
        self.add("m.room.power_levels", "", {"users": {CAROL: 100}})
        self.add("m.room.join_rules", "", {"join_rule": "public"})
        self.add("m.room.name", "", {"name": "Old remote room"})

    def ref(self, event_id: str) -> list[Any]:
        from unpaddedbase64 import encode_base64

        digest = compute_reference_hash(self.events[event_id], self.version)
        return [event_id, {"sha256": encode_base64(digest)}]

    def default_auth(self, sender: str) -> list[str]:
        keys = (("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", sender))
        return [self.state[k] for k in keys if k in self.state]

    def add(
        self,
        event_type: str,
        state_key: str,
        content: JsonDict,
        auth: list[str] | None = None,
        event_id: str | None = None,
    ) -> str:
        self.depth += 1
        auth = self.default_auth(CAROL) if auth is None else auth
        pdu: JsonDict = {
            "event_id": event_id or f"${self.depth}-{secrets.token_hex(4)}:remote.test",
            "room_id": self.room_id,
            "sender": CAROL,
            "type": event_type,
            "state_key": state_key,
            "content": content,
            "origin": "remote.test",
            "origin_server_ts": 1_000 + self.depth,
            "depth": self.depth,
            "prev_events": [self.ref(self.last)] if self.last else [],
            "auth_events": [self.ref(a) for a in auth],
        }
        hash_and_sign_event(pdu, "remote.test", self.remote.key, self.version)
        event_id = event_id_of(pdu, self.version)
        self.events[event_id] = pdu
        self.state[(event_type, state_key)] = event_id
        self.last = event_id
        return event_id

    def template(self, user_id: str, membership: str = "join") -> JsonDict:
        keys = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", "")]
        if membership != "join":
            keys = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", user_id)]
        assert self.last is not None
        return {
            # Synapse's templates name an event of their own: the joining server replaces it.
            "event_id": "$template:remote.test",
            "room_id": self.room_id,
            "sender": user_id,
            "state_key": user_id,
            "type": "m.room.member",
            "content": {"membership": membership},
            "origin": "remote.test",
            "origin_server_ts": 5_000,
            "depth": self.depth + 1,
            "prev_events": [self.ref(self.last)],
            "auth_events": [self.ref(self.state[k]) for k in keys if k in self.state],
        }

    def answer(self) -> JsonDict:
        state = [self.events[i] for i in self.state.values()]
        return {"origin": "remote.test", "state": state, "auth_chain": list(state)}


class V1OnlyResident:
    """Stands in for the federation client: a server that predates the v2 endpoints (they
    answer ``v2_error``) and serves make_join, make_leave and the v1 ones."""

    def __init__(self, room: OldResidentRoom, remote: FakeRemote) -> None:
        self.room = room
        self.remote = remote
        self.v2_error: FederationError = FederationError(
            "remote.test", "answered 400", status=400, errcode="M_UNRECOGNIZED"
        )
        self.v1_answer: Any = None  # None: the room's
        self.calls: list[tuple[str, str]] = []
        self.sent: list[JsonDict] = []

    async def get_json(self, destination: str, path: str, **_: Any) -> Any:
        self.calls.append(("GET", path))
        user = path.rsplit("/", 1)[1].replace("%40", "@").replace("%3A", ":")
        membership = "leave" if "/make_leave/" in path else "join"
        return {
            "room_version": self.room.version.identifier,
            "event": self.room.template(user, membership),
        }

    async def request(
        self, destination: str, method: str, path: str, *, content: Any = None, **_: Any
    ) -> Any:
        self.calls.append((method, path))
        if "/v2/" in path:
            raise self.v2_error
        self.sent.append(content)
        if self.v1_answer is not None:
            return self.v1_answer
        if "/v1/send_join/" in path:
            return [200, self.room.answer()]
        if "/v1/invite/" in path:
            event = copy.deepcopy(content)
            hash_and_sign_event(event, "remote.test", self.remote.key, self.room.version)
            # hash_and_sign_event re-hashes: the hash of the same content is the same.
            return [200, {"event": event}]
        return [200, {}]


@pytest.fixture
def old_resident(fed: Fed, remote: FakeRemote) -> V1OnlyResident:
    hs, _ = fed
    scripted = V1OnlyResident(OldResidentRoom(remote), remote)
    hs.remote_rooms._client = scripted  # type: ignore[assignment]
    return scripted


async def join_remote(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        f"/_matrix/client/v3/join/{q(REMOTE_ROOM)}",
        params={"via": "remote.test"},
        headers=auth_header(token),
    )


async def test_our_user_joins_an_old_room_through_v1(
    fed: Fed, old_resident: V1OnlyResident
) -> None:
    _, client = fed
    alice, token = await register(client, "alice")
    r = await join_remote(client, token)
    assert r.status_code == 200, r.text
    # v2 first, then the deprecated v1 that this server knows.
    paths = [p for _, p in old_resident.calls]
    assert "/v1/make_join/" in paths[0]
    assert "/v2/send_join/" in paths[1] and "/v1/send_join/" in paths[2], paths
    join = old_resident.sent[0]
    # Our join names itself on our server, replacing the template's ID, and keeps the
    # template's references.
    assert join["event_id"].endswith(":test") and join["event_id"] != "$template:remote.test"
    assert join["prev_events"] == [old_resident.room.ref(old_resident.room.last or "")]
    assert set(join["signatures"]) == {"test"}
    assert await members(client, token, REMOTE_ROOM) == {alice, CAROL}
    room = (await sync(client, token))["rooms"]["join"][REMOTE_ROOM]
    everything = room["state"]["events"] + room["timeline"]["events"]
    assert {"name": "Old remote room"} in [
        e["content"] for e in everything if e["type"] == "m.room.name"
    ]
    # Alice sends into it: a v1 event on top of her join.
    r = await client.put(
        f"/_matrix/client/v3/rooms/{q(REMOTE_ROOM)}/send/m.room.message/1",
        headers=auth_header(token),
        json={"msgtype": "m.text", "body": "hello"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["event_id"].endswith(":test")


async def test_old_room_join_failures(fed: Fed, old_resident: V1OnlyResident) -> None:
    _, client = fed
    alice, token = await register(client, "alice")
    # A 404 that says the room is unknown is no reason to try v1.
    old_resident.v2_error = FederationError(
        "remote.test", "answered 404", status=404, errcode="M_NOT_FOUND"
    )
    r = await join_remote(client, token)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text
    assert not any("/v1/send_join/" in p for _, p in old_resident.calls)
    # A plain 404 page (no Matrix error) is an unknown endpoint: v1 is tried; its answer
    # must be [200, {...}].
    old_resident.v2_error = FederationError("remote.test", "answered 404", status=404)
    for bad in ({"state": []}, [200, "x"], [200], "nope", [200, {"state": 1}]):
        old_resident.v1_answer = bad
        r = await join_remote(client, token)
        assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), (bad, r.text)
    r = await client.get(
        f"/_matrix/client/v3/rooms/{q(REMOTE_ROOM)}/joined_members", headers=auth_header(token)
    )
    assert r.status_code == 403, r.text
    old_resident.v1_answer = None
    r = await join_remote(client, token)
    assert r.status_code == 200, r.text
    assert await members(client, token, REMOTE_ROOM) == {alice, CAROL}


async def _invited(
    client: httpx.AsyncClient, remote: FakeRemote, user_id: str
) -> tuple[JsonDict, str]:
    """An invite of ``user_id`` into the old room, received through /v1/invite."""
    pdu, event_id = v1_invite(remote, user_id)
    r = await signed(
        client,
        remote,
        "PUT",
        f"{FED}/v1/invite/{q(REMOTE_ROOM)}/{q(event_id)}",
        content={**pdu, "unsigned": {"invite_room_state": []}},
    )
    assert r.status_code == 200, r.text
    return pdu, event_id


async def test_declining_an_old_room_invite_through_v1(
    fed: Fed, remote: FakeRemote, old_resident: V1OnlyResident
) -> None:
    _, client = fed
    alice, token = await register(client, "alice")
    pdu, event_id = await _invited(client, remote, alice)
    assert REMOTE_ROOM in (await sync(client, token))["rooms"]["invite"]
    r = await client.post(
        f"/_matrix/client/v3/rooms/{q(REMOTE_ROOM)}/leave", headers=auth_header(token), json={}
    )
    assert r.status_code == 200, r.text
    paths = [p for _, p in old_resident.calls]
    assert "/v1/make_leave/" in paths[0]
    assert "/v2/send_leave/" in paths[1] and "/v1/send_leave/" in paths[2], paths
    leave = old_resident.sent[-1]
    assert leave["content"] == {"membership": "leave"} and leave["event_id"].endswith(":test")
    # A full sync leaves out rooms left: the invite is gone.
    assert REMOTE_ROOM not in (await sync(client, token)).get("rooms", {}).get("invite", {})


@pytest.mark.parametrize("version", ["1", "12"])
async def test_inviting_a_remote_user_falls_back_to_v1(
    fed: Fed, old_resident: V1OnlyResident, version: str
) -> None:
    _, client = fed
    alice, token = await register(client, "alice")
    room_id = await create_room(client, token, room_version=version)
    r = await client.post(
        f"/_matrix/client/v3/rooms/{q(room_id)}/invite",
        headers=auth_header(token),
        json={"user_id": BOB},
    )
    paths = [p for _, p in old_resident.calls]
    if version == "12":
        # The v1 invite carries no room version: only rooms of versions 1 and 2 go through it.
        assert (r.status_code, r.json()["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")
        assert not any("/v1/invite/" in p for p in paths)
        assert await members(client, token, room_id) == {alice}
        return
    assert r.status_code == 200, r.text
    assert "/v2/invite/" in paths[0] and "/v1/invite/" in paths[1], paths
    sent = old_resident.sent[0]
    assert sent["state_key"] == BOB and "invite_room_state" in sent["unsigned"]
    r = await client.get(
        f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.member/{q(BOB)}",
        headers=auth_header(token),
    )
    assert r.status_code == 200 and r.json()["membership"] == "invite", r.text

    # An answer that changes the event under the same ID is refused (v1-v2 IDs are names,
    # not hashes), and the invite is withdrawn.
    def altered(content: Any) -> Any:
        event = copy.deepcopy(content)
        event["content"]["membership"] = "join"
        hash_and_sign_event(event, "remote.test", old_resident.remote.key, KNOWN_ROOM_VERSIONS["1"])
        return [200, {"event": event}]

    carol = "@dave:remote.test"
    old_resident.v1_answer = None
    original_request = old_resident.request

    async def tampering(destination: str, method: str, path: str, **kw: Any) -> Any:
        answer = await original_request(destination, method, path, **kw)
        if "/v1/invite/" in path:
            return altered(kw["content"])
        return answer

    old_resident.request = tampering  # type: ignore[method-assign]
    r = await client.post(
        f"/_matrix/client/v3/rooms/{q(room_id)}/invite",
        headers=auth_header(token),
        json={"user_id": carol},
    )
    assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), r.text
    r = await client.get(
        f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.member/{q(carol)}",
        headers=auth_header(token),
    )
    assert r.status_code != 200 or r.json()["membership"] != "invite", r.text


async def test_an_event_id_taken_in_another_room_is_refused(fed: Fed, remote: FakeRemote) -> None:
    """In versions 1 and 2 the sending server names its events: a join that reuses the ID of
    one of its events in another room must not be answered as a retry of that one (the
    answer would give the other room's state)."""
    _, client = fed
    alice, token = await register(client, "alice")
    first = await create_room(client, token, preset="public_chat", room_version="1")
    second = await create_room(client, token, preset="public_chat", room_version="1")
    made = await make(client, remote, "join", first, BOB)
    pdu, join_id = sign_v1(remote, made["event"])
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/send_join/{q(first)}/{q(join_id)}", content=pdu
    )
    assert r.status_code == 200, r.text
    made = await make(client, remote, "join", second, BOB)
    reused = copy.deepcopy(made["event"])
    reused["origin"] = "remote.test"
    reused["event_id"] = join_id
    hash_and_sign_event(reused, "remote.test", remote.key, KNOWN_ROOM_VERSIONS["1"])
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/send_join/{q(second)}/{q(join_id)}", content=reused
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), r.text
    assert await members(client, token, second) == {alice}
    # The same join again in its own room is a retry, answered as the first time.
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/send_join/{q(first)}/{q(join_id)}", content=pdu
    )
    assert r.status_code == 200, r.text
    assert r.json()["event"]["event_id"] == join_id


async def test_a_resident_reusing_an_event_id_of_another_room(
    fed: Fed, remote: FakeRemote, old_resident: V1OnlyResident
) -> None:
    """The state a resident answers must not smuggle in an event we hold in another room
    under a reused v1 ID: such an event is left out of the new room's state."""
    _, client = fed
    alice, token = await register(client, "alice")
    r = await join_remote(client, token)
    assert r.status_code == 200, r.text
    first_name = old_resident.room.state[("m.room.name", "")]
    other_id = "!other:remote.test"
    other = OldResidentRoom(remote, room_id=other_id)
    # Its name event is its own, under the ID of the first room's name event.
    other.add("m.room.name", "", {"name": "Other room"}, event_id=first_name)
    old_resident.room = other
    r = await client.post(
        f"/_matrix/client/v3/join/{q(other_id)}",
        params={"via": "remote.test"},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    assert await members(client, token, other_id) == {alice, CAROL}
    r = await client.get(
        f"/_matrix/client/v3/rooms/{q(other_id)}/state/m.room.name", headers=auth_header(token)
    )
    assert r.status_code == 404, r.text  # not the first room's name
    r = await client.get(
        f"/_matrix/client/v3/rooms/{q(REMOTE_ROOM)}/state/m.room.name",
        headers=auth_header(token),
    )
    assert r.status_code == 200 and r.json() == {"name": "Old remote room"}, r.text


async def test_an_invite_the_room_will_not_take_back_is_declined_here(
    fed: Fed, remote: FakeRemote, old_resident: V1OnlyResident
) -> None:
    """The inviting server refuses the leave: the invite is declined all the same, by a
    leave made and signed here after the invite (its only prev and auth event, a v1
    reference with the invite's hashes), which only this server knows of."""
    hs, client = fed
    alice, token = await register(client, "alice")
    pdu, event_id = await _invited(client, remote, alice)
    old_resident.v2_error = FederationError(
        "remote.test", "answered 403", status=403, errcode="M_FORBIDDEN"
    )
    r = await client.post(
        f"/_matrix/client/v3/rooms/{q(REMOTE_ROOM)}/leave", headers=auth_header(token), json={}
    )
    assert r.status_code == 200, r.text
    assert not any("/v1/send_leave/" in p for _, p in old_resident.calls)
    assert REMOTE_ROOM not in (await sync(client, token)).get("rooms", {}).get("invite", {})
    member = await hs.room_store.get_membership(REMOTE_ROOM, alice)
    assert member is not None and member.membership == "leave"
    leave = await hs.event_store.get_event(member.event_id)
    assert leave is not None and leave.event_id.endswith(":test")
    assert leave.pdu["prev_events"] == [[event_id, pdu["hashes"]]] == leave.pdu["auth_events"]
    # Leaving again changes nothing.
    r = await client.post(
        f"/_matrix/client/v3/rooms/{q(REMOTE_ROOM)}/leave", headers=auth_header(token), json={}
    )
    assert r.status_code == 200, r.text
