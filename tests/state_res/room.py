"""A room built by name, event by event, for tests of auth and state resolution.

Each event's state before it is the resolution of its parents' states (v1, v2 or v2.1 by
room version), its `auth_events` are selected from that state, and it must pass the auth
rules there (`add` raises otherwise), in the event format of the room version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

from homeserver.core.types import JsonDict
from homeserver.events.auth import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    StateKey,
    auth_types_for_event,
    check_auth,
)
from homeserver.events.format import compute_event_id, compute_room_id_v12, prev_event_ids
from homeserver.events.room_versions import RoomVersion
from homeserver.events.state_res import resolve_state
from homeserver.events.state_res_v1 import resolve_state_v1

A, B, C, D = "@alice:a.test", "@bob:b.test", "@carol:c.test", "@dave:d.test"


class Room:
    """A DAG built by name: `add` authorises each event against the state before it."""

    def __init__(self, version: RoomVersion, admins: dict[str, int] | None = None) -> None:
        self.version = version
        self.events: dict[str, JsonDict] = {}
        self.ids: dict[str, str] = {}
        self.after: dict[str, dict[StateKey, str]] = {}
        self.ts = 0
        content: JsonDict = {"room_version": version.identifier}
        if version.creator_in_content:
            content["creator"] = A
        create: JsonDict = {
            "type": CREATE,
            "state_key": "",
            "sender": A,
            "content": content,
            "origin_server_ts": 0,
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
            "hashes": {"sha256": "aA"},
        }
        if version.room_id_is_create_event_hash:
            self.room_id = compute_room_id_v12(create, version)
        else:
            self.room_id = "!r:a.test"
            create["room_id"] = self.room_id
        self.create = create
        self._store("create", create, {})
        self.add("ajoin", MEMBER, A, {"membership": "join"}, ["create"], state_key=A)
        users = dict(admins or {B: 50})
        if not version.creators_have_infinite_power:
            users[A] = 100
        self.add("pl", POWER_LEVELS, A, {"users": users}, ["ajoin"])
        self.add("jr", JOIN_RULES, A, {"join_rule": "public"}, ["pl"])
        self.add("bjoin", MEMBER, B, {"membership": "join"}, ["jr"], state_key=B)
        self.add("cjoin", MEMBER, C, {"membership": "join"}, ["bjoin"], state_key=C)

    def _store(self, name: str, event: JsonDict, before: dict[StateKey, str]) -> None:
        if self.version.event_id_in_event:
            event["event_id"] = f"${name}:a.test"
        event_id = (
            event["event_id"]
            if self.version.event_id_in_event
            else compute_event_id(event, self.version)
        )
        self.ids[name], self.events[event_id] = event_id, event
        self.after[name] = {**before, (event["type"], event.get("state_key", "")): event_id}

    def _refs(self, ids: list[str]) -> list[Any]:
        return [[i, {}] for i in ids] if self.version.event_id_in_event else ids

    def get_events(self, ids: Collection[str]) -> dict[str, JsonDict]:
        return {i: self.events[i] for i in ids if i in self.events}

    def state_after(self, *names: str) -> dict[StateKey, str]:
        if len(names) == 1:
            return dict(self.after[names[0]])
        return self.resolve(*names)

    def resolve(self, *names: str) -> dict[StateKey, str]:
        sets = [self.after[n] for n in names]
        if self.version.identifier == "1":
            return asyncio.run(resolve_state_v1(self.version, sets, self.get_events))
        return asyncio.run(resolve_state(self.version, sets, self.get_events))

    def raw(
        self,
        event_type: str,
        sender: str,
        content: JsonDict,
        prevs: list[str],
        state_key: str | None = "",
        ts: int | None = None,
        state: dict[StateKey, str] | None = None,
    ) -> JsonDict:
        """The event, its `auth_events` selected from `state` (default: the state after
        `prevs`), not checked."""
        before = self.state_after(*prevs) if state is None else state
        keys = auth_types_for_event(self.version, event_type, state_key, sender, content)
        self.ts += 1
        event: JsonDict = {
            "type": event_type,
            "sender": sender,
            "room_id": self.room_id,
            "content": content,
            "origin_server_ts": self.ts if ts is None else ts,
            "depth": 1 + max(self.events[self.ids[p]]["depth"] for p in prevs),
            "prev_events": self._refs([self.ids[p] for p in prevs]),
            "auth_events": self._refs([before[k] for k in keys if k in before]),
            "hashes": {"sha256": "aA"},
        }
        if state_key is not None:
            event["state_key"] = state_key
        return event

    def store_raw(self, name: str, event: JsonDict) -> str:
        """Keep `event` without checking it (a forged event, for instance)."""
        self._store(name, event, self.state_after(*self._prev_names(event)))
        return self.ids[name]

    def _prev_names(self, event: JsonDict) -> list[str]:
        ids = prev_event_ids(event, self.version)
        return [n for n, i in self.ids.items() if i in ids]

    def add(
        self,
        name: str,
        event_type: str,
        sender: str,
        content: JsonDict,
        prevs: list[str],
        state_key: str | None = "",
        ts: int | None = None,
    ) -> str:
        """Add the event if the auth rules allow it in the state after `prevs`; raise if not."""
        before = self.state_after(*prevs)
        event = self.raw(event_type, sender, content, prevs, state_key, ts, before)
        keys = auth_types_for_event(self.version, event_type, state_key, sender, content)
        auth = {k: self.events[before[k]] for k in keys if k in before}
        create = self.create if self.version.room_id_is_create_event_hash else None
        check_auth(self.version, event, auth, create)
        self._store(name, event, before)
        return self.ids[name]

    def member(self, state: dict[StateKey, str], user: str) -> str | None:
        event_id = state.get((MEMBER, user))
        return None if event_id is None else self.events[event_id]["content"]["membership"]
