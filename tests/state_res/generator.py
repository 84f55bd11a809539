"""Seeded random rooms that fork, for state resolution tests.

A DAG starts like a real room (create, the creator's join, power levels, join rules, members
joining), then grows branches: each new event extends a branch from that branch's own state,
new branches fork from any earlier point of another, and now and then two branches merge (an
event with both heads as parents, on their resolved state), so their states drift apart by power
level changes, joins, leaves, kicks, bans, unbans, invites, knocks, join-rule changes and topic
changes. Every event is built from the state at its branch tip: its `auth_events` are the
auth events selection from that state, and it is kept only if the auth rules allow it there.
The DAG's state sets are the states at two to four branch tips.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any

from homeserver.core.errors import MatrixError
from homeserver.core.types import JsonDict
from homeserver.events.auth import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    StateKey,
    auth_types_for_event,
    check_auth,
    get_user_power_level,
)
from homeserver.events.format import compute_event_id, compute_room_id_v12
from homeserver.events.room_versions import ROOM_VERSIONS, RoomVersion
from homeserver.events.state_res import resolve_state

TOPIC = "m.room.topic"


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits (an event source that answers at once) to its end,
    without the cost of an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the coroutine waited on something")


@dataclass
class Dag:
    seed: int
    room_version: str
    events: dict[str, JsonDict]
    state_sets: list[dict[StateKey, str]]

    def to_json(self, index: int | None = None) -> str:
        return json.dumps(
            {
                "index": index,
                "seed": self.seed,
                "room_version": self.room_version,
                "events": self.events,
                "state_sets": [[[t, k, e] for (t, k), e in s.items()] for s in self.state_sets],
            },
            sort_keys=True,
        )


@dataclass
class _Branch:
    head: str
    depth: int
    ts: int
    state: dict[StateKey, str]
    history: list[tuple[str, int, int, dict[StateKey, str]]] = field(default_factory=list)
    # Other parents of the branch's next event: set when two branches merge.
    merged_heads: list[str] = field(default_factory=list)


class _Room:
    def __init__(self, rng: random.Random, version: RoomVersion, users: list[str]) -> None:
        self.rng = rng
        self.version = version
        self.users = users
        self.creator = users[0]
        self.events: dict[str, JsonDict] = {}
        self.room_id = "!room:a.test"
        self.create_event: JsonDict = {}

    def build_create(self) -> _Branch:
        content: JsonDict = {"room_version": self.version.identifier}
        if self.version.creator_in_content:
            content["creator"] = self.creator
        if self.version.creators_have_infinite_power and self.rng.random() < 0.3:
            content["additional_creators"] = [self.users[1]]
        event: JsonDict = {
            "type": CREATE,
            "state_key": "",
            "sender": self.creator,
            "content": content,
            "origin_server_ts": 0,
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
            "hashes": {"sha256": "aGFzaA"},
            "signatures": {},
        }
        if self.version.room_id_is_create_event_hash:
            self.room_id = compute_room_id_v12(event, self.version)
        else:
            event["room_id"] = self.room_id
        event_id = self._name(event)
        self.events[event_id] = event
        self.create_event = event
        return _Branch(head=event_id, depth=1, ts=0, state={(CREATE, ""): event_id})

    def send(
        self, branch: _Branch, event_type: str, state_key: str, sender: str, content: JsonDict
    ) -> bool:
        """Build the event on `branch`; keep it if the auth rules allow it there."""
        keys = auth_types_for_event(self.version, event_type, state_key, sender, content)
        auth_ids = [branch.state[k] for k in keys if k in branch.state]
        ts = branch.ts + self.rng.choice((0, 1, 1, 2, 5))
        event: JsonDict = {
            "type": event_type,
            "state_key": state_key,
            "sender": sender,
            "room_id": self.room_id,
            "content": content,
            "origin_server_ts": ts,
            "depth": branch.depth + 1,
            "prev_events": self._refs([branch.head, *branch.merged_heads]),
            "auth_events": self._refs(auth_ids),
            "hashes": {"sha256": "aGFzaA"},
            # Signatures are not checked here; a restricted join must name its authoriser's.
            "signatures": {server: {"ed25519:1": "c2ln"} for server in _servers(sender, content)},
        }
        auth = {k: self.events[branch.state[k]] for k in keys if k in branch.state}
        create = self.create_event if self.version.room_id_is_create_event_hash else None
        try:
            check_auth(self.version, event, auth, create)
        except MatrixError:
            return False
        event_id = self._name(event)
        self.events[event_id] = event
        branch.history.append((branch.head, branch.depth, branch.ts, dict(branch.state)))
        branch.head, branch.depth, branch.ts = event_id, branch.depth + 1, ts
        branch.merged_heads = []
        branch.state[(event_type, state_key)] = event_id
        return True

    def _refs(self, event_ids: list[str]) -> list[Any]:
        if self.version.event_id_in_event:  # v1-v2: [event_id, hashes] pairs
            return [[e, {"sha256": "aGFzaA"}] for e in event_ids]
        return list(event_ids)

    def _name(self, event: JsonDict) -> str:
        if self.version.event_id_in_event:
            event["event_id"] = f"${self.rng.getrandbits(64):016x}:{event['sender'].split(':')[1]}"
            return str(event["event_id"])
        return compute_event_id(event, self.version)

    def merge(self, one: _Branch, other: _Branch) -> _Branch | None:
        """A branch whose next event has both heads as parents, on their resolved state (our
        resolver's: the differential test only compares the final resolution)."""
        if one.head == other.head:
            return None
        state = run_sync(resolve_state(self.version, [one.state, other.state], self._get_events))
        merged = _Branch(
            head=one.head,
            depth=max(one.depth, other.depth),
            ts=max(one.ts, other.ts),
            state=state,
            merged_heads=[other.head],
        )
        return merged if self.act(merged) else None

    def _get_events(self, ids: Collection[str]) -> dict[str, JsonDict]:
        return {i: self.events[i] for i in ids if i in self.events}

    # -- what the members do --------------------------------------------------------------

    def membership(self, branch: _Branch, user: str) -> str | None:
        event_id = branch.state.get((MEMBER, user))
        if event_id is None:
            return None
        return str(self.events[event_id]["content"].get("membership"))

    def power_levels(self, branch: _Branch) -> JsonDict | None:
        event_id = branch.state.get((POWER_LEVELS, ""))
        return self.events[event_id]["content"] if event_id else None

    def level(self, branch: _Branch, user: str) -> float:
        return float(
            get_user_power_level(self.version, user, self.power_levels(branch), self.create_event)
        )

    def act(self, branch: _Branch) -> bool:
        rng = self.rng
        joined = [u for u in self.users if self.membership(branch, u) == "join"]
        if not joined:
            return False
        by_power = sorted(joined, key=lambda u: -self.level(branch, u))
        sender = rng.choice(by_power[:2] if rng.random() < 0.5 else joined)
        target = rng.choice(self.users)
        action = rng.choices(
            ["topic", "power", "join", "leave", "kick", "ban", "unban", "invite", "knock", "rules"],
            weights=[14, 12, 16, 8, 6, 6, 3, 8, 4, 5],
        )[0]
        if action == "topic":
            return self.send(branch, TOPIC, "", sender, {"topic": f"t{rng.randrange(1000)}"})
        if action == "power":
            return self.send(branch, POWER_LEVELS, "", sender, self._new_levels(branch, sender))
        if action == "join":
            content: JsonDict = {"membership": "join"}
            if self._join_rule(branch) in ("restricted", "knock_restricted") and rng.random() < 0.7:
                content["join_authorised_via_users_server"] = rng.choice(by_power[:3])
            return self.send(branch, MEMBER, target, target, content)
        if action == "leave":
            return self.send(branch, MEMBER, sender, sender, {"membership": "leave"})
        if action in ("kick", "unban"):
            return self.send(branch, MEMBER, target, sender, {"membership": "leave"})
        if action == "ban":
            return self.send(branch, MEMBER, target, sender, {"membership": "ban"})
        if action == "invite":
            return self.send(branch, MEMBER, target, sender, {"membership": "invite"})
        if action == "knock":
            return self.send(branch, MEMBER, target, target, {"membership": "knock"})
        rules = ["public", "invite"]
        rules += ["knock"] if self.version.knock_join_rule else []
        rules += ["restricted"] if self.version.restricted_join_rule else []
        rules += ["knock_restricted"] if self.version.knock_restricted_join_rule else []
        rule = rng.choice(rules)
        content = {"join_rule": rule}
        if rule.endswith("restricted"):
            content["allow"] = [{"type": "m.room_membership", "room_id": "!space:a.test"}]
        return self.send(branch, JOIN_RULES, "", sender, content)

    def _join_rule(self, branch: _Branch) -> str | None:
        event_id = branch.state.get((JOIN_RULES, ""))
        return self.events[event_id]["content"].get("join_rule") if event_id else None

    def _new_levels(self, branch: _Branch, sender: str) -> JsonDict:
        rng = self.rng
        content = json.loads(json.dumps(self.power_levels(branch) or {}))
        users = content.setdefault("users", {})
        own = self.level(branch, sender)
        choice = rng.random()
        if choice < 0.6:
            target = rng.choice(self.users[1:])
            if target in users and rng.random() < 0.3:
                del users[target]
            else:
                users[target] = rng.choice([v for v in (0, 10, 50, 75, 100) if v <= own] or [0])
        elif choice < 0.8:
            key = rng.choice(["ban", "kick", "invite", "state_default", "redact"])
            content[key] = rng.choice([0, 25, 50, 75, 100])
        else:
            content.setdefault("events", {})[TOPIC] = rng.choice([0, 50, 100])
        if self.version.creators_have_infinite_power:
            for creator in [
                self.creator,
                *self.create_event["content"].get("additional_creators", []),
            ]:
                users.pop(creator, None)
        return dict(content)


def generate(seed: int, room_version: str, n_events: int = 300) -> Dag:
    """A DAG of about `n_events` events with two to four branch tips to resolve."""
    rng = random.Random(seed)
    version = ROOM_VERSIONS[room_version]
    servers = ["a.test", "b.test", "c.test"]
    users = [f"@u{i}:{servers[i % 3]}" for i in range(rng.randint(6, 14))]
    room = _Room(rng, version, users)
    main = room.build_create()
    room.send(main, MEMBER, users[0], users[0], {"membership": "join"})
    levels: JsonDict = {"users": {users[1]: 100, users[2]: 50}, "users_default": 0}
    if not version.creators_have_infinite_power:
        levels["users"][users[0]] = 100
    room.send(main, POWER_LEVELS, "", users[0], levels)
    room.send(main, JOIN_RULES, "", users[0], {"join_rule": "public"})
    for user in users[1:]:
        if rng.random() < 0.8:
            room.send(main, MEMBER, user, user, {"membership": "join"})
    branches = [main]
    attempts = 0
    while len(room.events) < n_events and attempts < n_events * 20:
        attempts += 1
        if rng.random() < 0.03 and len(branches) >= 2 and room.version.identifier != "1":
            one, other = rng.sample(branches, 2)
            merged = room.merge(one, other)
            if merged is not None:
                branches[branches.index(one)] = merged
            continue
        if rng.random() < 0.04 or len(branches) < 2:
            parent = rng.choice(branches)
            if parent.history and rng.random() < 0.7:
                head, depth, ts, state = rng.choice(parent.history[-30:])
            else:
                head, depth, ts, state = parent.head, parent.depth, parent.ts, parent.state
            branches.append(_Branch(head=head, depth=depth, ts=ts, state=dict(state)))
            continue
        room.act(rng.choice(branches[-4:] if rng.random() < 0.7 else branches))
    tips = rng.sample(branches, k=min(len(branches), rng.randint(2, 4)))
    return Dag(seed, room_version, room.events, [dict(b.state) for b in tips])


def _servers(sender: str, content: JsonDict) -> list[str]:
    servers = [sender.split(":", 1)[1]]
    authoriser = content.get("join_authorised_via_users_server")
    if isinstance(authoriser, str):
        servers.append(authoriser.split(":", 1)[1])
    return servers
