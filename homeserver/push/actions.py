"""Push actions of a new event: its members' rules evaluated once, before it is persisted.

Called by the event sender for every local event; the result commits with the event (spec,
"Server behaviour": the new counts appear in the same /sync as the event). Only local joined
members other than the sender are evaluated (and the invitee of an invite), not those who
ignore the sender; only notifying outcomes are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from cachetools import LRUCache

from homeserver.accounts.ignored import IgnoreLists
from homeserver.core.types import JsonDict
from homeserver.events.auth import get_user_power_level
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.push.evaluator import CompiledRuleset, EventContext
from homeserver.push.service import PushRuleService
from homeserver.storage.events import EventStore
from homeserver.storage.push import PushAction
from homeserver.storage.push_rules import PushRuleStore
from homeserver.storage.rooms import Room

logger = logging.getLogger(__name__)

MAIN_THREAD = "main"
# spec, "Receiving notifications": follow relations at most 3 hops to find an event's thread.
MAX_THREAD_HOPS = 3
MAX_CACHED_ROOMS = 2_000


@dataclass(frozen=True, slots=True)
class RoomMembers:
    state_group: int
    joined_count: int
    local: tuple[tuple[str, str | None], ...]  # (user_id, display name) of local joined


class PushActionGenerator:
    def __init__(
        self,
        rules: PushRuleService,
        store: PushRuleStore,
        events: EventStore,
        server_name: str,
        ignored: IgnoreLists,
    ) -> None:
        self._rules = rules
        self._store = store
        self._events = events
        self._ignored = ignored
        self._suffix = ":" + server_name
        # Keyed by room; valid while the room's state group is the one it was read at (the
        # members only change with a state event, which makes a new group).
        self._members: LRUCache[str, RoomMembers] = LRUCache(maxsize=MAX_CACHED_ROOMS)

    async def actions_for(
        self,
        room: Room,
        pdu: JsonDict,
        event_id: str,
        auth_events: Mapping[tuple[str, str], JsonDict],
        create: JsonDict | None,
    ) -> tuple[PushAction, ...]:
        members = await self._room_members(room)
        sender = pdu["sender"]
        targets = [(u, dn) for u, dn in members.local if u != sender]
        invitee = pdu.get("state_key")
        if (
            pdu["type"] == "m.room.member"
            and isinstance(invitee, str)
            and invitee != sender
            and invitee.endswith(self._suffix)
            and pdu.get("content", {}).get("membership") == "invite"
            and all(u != invitee for u, _ in targets)
        ):
            targets.append((invitee, None))  # spec: .m.rule.invite_for_me
        if not targets:
            return ()
        # spec, "Ignoring Users": what they do not see must not notify them.
        ignoring = await self._ignored.ignoring(sender, [u for u, _ in targets])
        if ignoring:
            targets = [(u, dn) for u, dn in targets if u not in ignoring]
            if not targets:
                return ()
        version = KNOWN_ROOM_VERSIONS[room.room_version]
        power_levels = auth_events.get(("m.room.power_levels", ""))
        pl_content = power_levels.get("content") if power_levels is not None else None
        ctx = EventContext(
            pdu,
            event_id,
            member_count=members.joined_count,
            sender_power=get_user_power_level(version, sender, pl_content, create),
            power_levels=pl_content,
        )
        rulesets = await self._rules.compiled_for([u for u, _ in targets])
        # Members who share a compiled ruleset (all who changed nothing) go through it
        # together.
        groups: dict[int, tuple[CompiledRuleset, list[tuple[str, str | None]]]] = {}
        for member in targets:
            ruleset = rulesets[member[0]]
            groups.setdefault(id(ruleset), (ruleset, []))[1].append(member)
        notified = [
            (user_id, outcome)
            for ruleset, members in groups.values()
            for user_id, outcome in ruleset.evaluate_many(ctx, members)
            if outcome.notify
        ]
        if not notified:
            return ()
        thread_id = await self._thread_of(pdu, room.room_id)
        return tuple(
            PushAction(user_id, thread_id, outcome.actions_json, outcome.highlight)
            for user_id, outcome in notified
        )

    async def _room_members(self, room: Room) -> RoomMembers:
        assert room.current_state_group is not None
        cached = self._members.get(room.room_id)
        if cached is not None and cached.state_group == room.current_state_group:
            return cached
        joined = await self._store.get_joined_members(room.room_id)
        members = RoomMembers(
            room.current_state_group,
            len(joined),
            tuple((u, dn) for u, dn in joined if u.endswith(self._suffix)),
        )
        self._members[room.room_id] = members
        return members

    async def _thread_of(self, pdu: JsonDict, room_id: str) -> str:
        """The thread root's event ID, or "main" (spec: threaded read receipts)."""
        content = pdu.get("content")
        for _ in range(MAX_THREAD_HOPS):
            relation = content.get("m.relates_to") if isinstance(content, dict) else None
            parent_id = relation.get("event_id") if isinstance(relation, dict) else None
            if not isinstance(relation, dict) or not isinstance(parent_id, str):
                return MAIN_THREAD
            if relation.get("rel_type") == "m.thread":
                return parent_id
            parent = await self._events.get_event(parent_id)
            if parent is None or parent.room_id != room_id:
                return MAIN_THREAD
            content = parent.content
        return MAIN_THREAD
