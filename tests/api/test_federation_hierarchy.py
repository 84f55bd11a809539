"""Spaces across servers: our ``GET /_matrix/federation/v1/hierarchy/{roomId}`` as another
server sees it (a fake remote that signs), and our clients' ``/hierarchy`` reaching rooms we
are not in through a scripted remote server's answers."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.types import JsonDict
from homeserver.federation.client import FederationError
from tests.api.test_federation_rooms import FED, q, remote_join, signed
from tests.api.test_space_hierarchy import add_child, hierarchy, hierarchy_url, ids, space
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, create_room, register

Fed = tuple[Homeserver, httpx.AsyncClient]
BOB = "@bob:remote.test"


async def ask(
    client: httpx.AsyncClient, remote: FakeRemote, room_id: str, **query: Any
) -> httpx.Response:
    return await signed(client, remote, "GET", f"{FED}/v1/hierarchy/{q(room_id)}", query or None)


async def test_serves_our_space_to_another_server(
    fed: Fed, remote: FakeRemote, clock: FakeClock
) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    root = await space(client, token, name="Root", preset="public_chat")
    public = await create_room(client, token, name="Public", preset="public_chat")
    private = await create_room(client, token, name="Private", preset="private_chat")
    readable = await create_room(
        client,
        token,
        name="Readable",
        preset="private_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "content": {"history_visibility": "world_readable"},
            }
        ],
    )
    restricted = await create_room(
        client,
        token,
        name="Members of root",
        initial_state=[
            {
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": root}],
                },
            }
        ],
    )
    sub = await space(client, token, name="Sub", preset="public_chat")
    elsewhere = "!elsewhere:other.test"
    await add_child(client, token, root, public, suggested=True)
    clock.advance(10)
    for child in (private, readable, restricted, sub):
        await add_child(client, token, root, child)
        clock.advance(10)
    await add_child(client, token, root, elsewhere, via=["other.test"])
    await add_child(client, token, sub, public)

    r = await ask(client, remote, root)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["room"]["room_id"] == root and body["room"]["name"] == "Root"
    assert body["room"]["room_type"] == "m.space"
    assert [c["state_key"] for c in body["room"]["children_state"]] == [
        public,
        private,
        readable,
        restricted,
        sub,
        elsewhere,
    ]
    assert all(
        set(c) == {"type", "state_key", "content", "sender", "origin_server_ts"}
        for c in body["room"]["children_state"]
    )
    children = {c["room_id"]: c for c in body["children"]}
    # Public and world-readable rooms, and the sub-space (without its own children); not
    # the private room nor the restricted one (remote.test has nobody in root yet); a room
    # this server is not in is left out altogether.
    assert set(children) == {public, readable, sub}
    assert children[public]["name"] == "Public" and children[public]["join_rule"] == "public"
    assert "children_state" not in children[sub]
    assert sorted(body["inaccessible_children"]) == sorted([private, restricted])

    r = await ask(client, remote, root, suggested_only="true")
    assert r.status_code == 200, r.text
    assert [c["state_key"] for c in r.json()["room"]["children_state"]] == [public]
    assert [c["room_id"] for c in r.json()["children"]] == [public]

    # Once a user of remote.test is in root, the restricted room is for it too.
    await remote_join(client, remote, root, BOB)
    r = await ask(client, remote, root)
    assert restricted in {c["room_id"] for c in r.json()["children"]}
    assert r.json()["inaccessible_children"] == [private]
    # A private room it has nobody in stays unknown to it.
    r = await ask(client, remote, private)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text


async def test_refuses_what_the_server_may_not_see(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    secret = await space(client, token, name="Secret", preset="private_chat")
    r = await ask(client, remote, secret)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text
    r = await ask(client, remote, "!unknown:test")
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text
    r = await ask(client, remote, secret, suggested_only="maybe")
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), r.text
    r = await ask(client, remote, "not-a-room-id")
    assert r.status_code == 400, r.text
    r = await client.get(f"{FED}/v1/hierarchy/{q(secret)}")
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED"), r.text
    # A room that is no space answers itself, with no children.
    public = await create_room(client, token, name="Plain", preset="public_chat")
    r = await ask(client, remote, public)
    assert r.status_code == 200, r.text
    assert r.json()["room"]["children_state"] == [] and r.json()["children"] == []


# --- our clients, rooms on another server ---------------------------------------------------


def summary(room_id: str, **extra: Any) -> JsonDict:
    return {
        "room_id": room_id,
        "num_joined_members": 3,
        "world_readable": False,
        "guest_can_join": False,
        "join_rule": "public",
        **extra,
    }


def child(room_id: str, ts: int = 1, **content: Any) -> JsonDict:
    return {
        "type": "m.space.child",
        "state_key": room_id,
        "content": {"via": ["remote.test"], **content},
        "sender": "@carol:remote.test",
        "origin_server_ts": ts,
    }


class ScriptedSpaces:
    """Stands in for the federation client: answers /hierarchy from a table."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[str, str, Any]] = []

    async def get_json(self, destination: str, path: str, **kw: Any) -> Any:
        room_id = unquote(path.rsplit("/", 1)[1])
        self.calls.append((destination, room_id, kw.get("query")))
        answer = self.answers.get(room_id)
        if answer is None:
            raise FederationError(destination, "answered 404", status=404, errcode="M_NOT_FOUND")
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def spaces(fed: Fed) -> ScriptedSpaces:
    hs, _ = fed
    scripted = ScriptedSpaces()
    assert hs.space_hierarchy._remote is not None
    hs.space_hierarchy._remote._client = scripted
    return scripted


REMOTE_SPACE = "!space:remote.test"
ROOM_A = "!a:remote.test"
ROOM_B = "!b:remote.test"
SUB = "!sub:remote.test"
DEEP = "!deep:remote.test"
PRIVATE = "!private:remote.test"
HIDDEN = "!hidden:remote.test"


async def test_client_hierarchy_asks_other_servers(
    fed: Fed, spaces: ScriptedSpaces, clock: FakeClock
) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    root = await space(client, token, name="Ours", preset="public_chat")
    local = await create_room(client, token, name="Local", preset="public_chat")
    await add_child(client, token, root, REMOTE_SPACE, via=["remote.test"])
    clock.advance(10)
    await add_child(client, token, root, local)
    spaces.answers[REMOTE_SPACE] = {
        "room": summary(
            REMOTE_SPACE,
            name="Their space",
            room_type="m.space",
            children_state=[
                child(ROOM_B, 2),
                child(ROOM_A, 5, order="a"),
                child(SUB, 3),
                child(PRIVATE, 4),
                child(HIDDEN, 6),
                {"type": "m.space.child", "state_key": "!novia:remote.test", "content": {}},
                "garbage",
            ],
        ),
        "children": [
            summary(ROOM_A, name="A", topic=42, num_joined_members="many"),
            summary(ROOM_B, name="B", join_rule="knock"),
            summary(SUB, name="Sub", room_type="m.space"),
            summary(PRIVATE, join_rule="invite"),
            "garbage",
        ],
        "inaccessible_children": [HIDDEN],
    }
    spaces.answers[SUB] = {
        "room": summary(SUB, name="Sub", room_type="m.space", children_state=[child(DEEP)]),
        "children": [summary(DEEP, name="Deep", world_readable=True, join_rule="invite")],
        "inaccessible_children": [],
    }
    body = await hierarchy(client, token, root)
    # Depth first, children in the spec's order (a valid order first, then timestamps);
    # the private room (a summary says invite-only) and the one the server said nobody here
    # could see are left out; a child without via is no child.
    assert ids(body) == [root, REMOTE_SPACE, ROOM_A, ROOM_B, SUB, DEEP, local]
    rooms = {r["room_id"]: r for r in body["rooms"]}
    # A remote summary keeps the spec's fields with the spec's types only.
    assert rooms[ROOM_A]["name"] == "A" and "topic" not in rooms[ROOM_A]
    assert rooms[ROOM_A]["num_joined_members"] == 0
    assert rooms[ROOM_A]["children_state"] == []
    assert [c["state_key"] for c in rooms[REMOTE_SPACE]["children_state"]] == [
        ROOM_A,
        ROOM_B,
        SUB,
        PRIVATE,
        HIDDEN,
    ]
    # One request per remote space: the rooms that are no spaces came with their parent.
    assert sorted(room for _, room, _ in spaces.calls) == sorted([REMOTE_SPACE, SUB])
    assert all(dest == "remote.test" for dest, _, _ in spaces.calls)

    # Answers are kept a while: the next walk asks nothing; five minutes later, it asks.
    calls = len(spaces.calls)
    page = await hierarchy(client, token, root, limit=2)
    assert ids(page) == [root, REMOTE_SPACE]
    page = await hierarchy(client, token, root, limit=10, **{"from": page["next_batch"]})
    assert ids(page) == [ROOM_A, ROOM_B, SUB, DEEP, local]
    assert len(spaces.calls) == calls
    clock.advance(5 * 60 * 1000 + 1)
    await hierarchy(client, token, root)
    assert len(spaces.calls) == calls + 2

    # suggested_only is passed on, and applied to what comes back.
    spaces.calls.clear()
    body = await hierarchy(client, token, root, suggested_only="true")
    assert ids(body) == [root]
    await add_child(client, token, root, REMOTE_SPACE, via=["remote.test"], suggested=True)
    body = await hierarchy(client, token, root, suggested_only="true")
    assert ids(body) == [root, REMOTE_SPACE]
    assert spaces.calls[-1][2] == {"suggested_only": "true"}
    assert body["rooms"][1]["children_state"] == []


@pytest.mark.parametrize(
    "answer",
    [
        "not an object",
        {"room": summary("!another:remote.test"), "children": []},
        {"room": "x", "children": []},
        {"room": {**summary(REMOTE_SPACE), "room_id": 5}},
        FederationError("remote.test", "no answer"),
    ],
)
async def test_bad_or_no_answers_leave_the_room_out(
    fed: Fed, spaces: ScriptedSpaces, answer: Any
) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    root = await space(client, token, name="Ours", preset="public_chat")
    await add_child(client, token, root, REMOTE_SPACE, via=["remote.test", "other.test"])
    spaces.answers[REMOTE_SPACE] = answer
    body = await hierarchy(client, token, root)
    assert ids(body) == [root]
    # Each server of via was tried.
    assert [dest for dest, _, _ in spaces.calls] == ["remote.test", "other.test"]


async def test_a_root_we_are_not_in(fed: Fed, spaces: ScriptedSpaces) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    spaces.answers[REMOTE_SPACE] = {
        "room": summary(REMOTE_SPACE, room_type="m.space", children_state=[child(ROOM_A)]),
        "children": [summary(ROOM_A, name="A")],
        "inaccessible_children": [],
    }
    body = await hierarchy(client, token, REMOTE_SPACE)
    assert ids(body) == [REMOTE_SPACE, ROOM_A]
    assert [(dest, room) for dest, room, _ in spaces.calls] == [("remote.test", REMOTE_SPACE)]
    # A private one, or one nobody answers for: the user may not view it.
    spaces.answers["!closed:remote.test"] = {
        "room": summary("!closed:remote.test", join_rule="invite"),
        "children": [],
        "inaccessible_children": [],
    }
    for room in ("!closed:remote.test", "!silent:remote.test"):
        r = await client.get(hierarchy_url(room), headers=auth_header(token))
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), r.text
