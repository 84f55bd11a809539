"""Push rules as stored: each user's own rules and changes to the server defaults, and the
joined members a rule evaluation reads."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.core.types import JsonDict
from homeserver.storage.database import Database, prepared
from homeserver.storage.schema import (
    push_rule_defaults,
    push_rules,
    room_memberships,
)


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A user-defined push rule as stored (``priority``: higher is evaluated first)."""

    kind: str
    rule_id: str
    priority: int
    actions: tuple[Any, ...]
    enabled: bool
    conditions: tuple[JsonDict, ...] | None
    pattern: str | None


@dataclass(frozen=True, slots=True)
class DefaultChange:
    """What a user changed in a server-default rule (``None``: as the server has it)."""

    enabled: bool | None
    actions: tuple[Any, ...] | None


@dataclass(frozen=True, slots=True)
class UserRules:
    """Everything stored about one user's push rules."""

    rules: tuple[StoredRule, ...] = ()
    defaults: Mapping[str, DefaultChange] | None = None


_JOINED_MEMBERS = prepared(
    sa.select(room_memberships.c.user_id, room_memberships.c.displayname).where(
        room_memberships.c.room_id == sa.bindparam("room_id"),
        room_memberships.c.membership == "join",
    )
)


class PushRuleStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- rules -----------------------------------------------------------------------------

    async def get_user_rules(self, user_ids: Collection[str]) -> dict[str, UserRules]:
        """Stored rules of each user who has any (others are left out), in two queries."""
        if not user_ids:
            return {}
        ids = list(user_ids)
        async with self._db.read() as conn:
            own = (
                await conn.execute(sa.select(push_rules).where(push_rules.c.user_id.in_(ids)))
            ).all()
            changed = (
                await conn.execute(
                    sa.select(push_rule_defaults).where(push_rule_defaults.c.user_id.in_(ids))
                )
            ).all()
        rules: dict[str, list[StoredRule]] = {}
        for r in own:
            rules.setdefault(r.user_id, []).append(
                StoredRule(
                    r.kind,
                    r.rule_id,
                    int(r.priority),
                    tuple(r.actions),
                    bool(r.enabled),
                    tuple(r.conditions) if r.conditions is not None else None,
                    r.pattern,
                )
            )
        defaults: dict[str, dict[str, DefaultChange]] = {}
        for r in changed:
            defaults.setdefault(r.user_id, {})[r.rule_id] = DefaultChange(
                r.enabled, tuple(r.actions) if r.actions is not None else None
            )
        return {
            u: UserRules(tuple(rules.get(u, ())), defaults.get(u))
            for u in set(rules) | set(defaults)
        }

    async def put_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        *,
        conditions: Sequence[JsonDict] | None,
        pattern: str | None,
        actions: Sequence[Any],
        before: str | None,
        after: str | None,
    ) -> str | None:
        """Add or replace a user rule, placed before/after another (or first when new, in
        place when it exists). Returns None, or the ``before``/``after`` rule ID not found."""
        async with self._db.write() as conn:
            rows = (
                await conn.execute(
                    sa.select(push_rules.c.rule_id, push_rules.c.priority)
                    .where(push_rules.c.user_id == user_id, push_rules.c.kind == kind)
                    .order_by(push_rules.c.priority.desc(), push_rules.c.rule_id)
                )
            ).all()
            order = [r.rule_id for r in rows]
            existed = rule_id in order
            position = order.index(rule_id) if existed else 0
            order = [r for r in order if r != rule_id]
            if before is not None:
                if before not in order:
                    return before
                position = order.index(before)
            elif after is not None:
                if after not in order:
                    return after
                position = order.index(after) + 1
            order.insert(position, rule_id)
            old = {r.rule_id: int(r.priority) for r in rows}
            new = {rid: len(order) - i for i, rid in enumerate(order)}
            for rid, priority in new.items():
                if rid != rule_id and old.get(rid) != priority:
                    await conn.execute(
                        sa.update(push_rules)
                        .where(
                            push_rules.c.user_id == user_id,
                            push_rules.c.kind == kind,
                            push_rules.c.rule_id == rid,
                        )
                        .values(priority=priority)
                    )
            await conn.execute(
                self._db.upsert(
                    push_rules,
                    {
                        "user_id": user_id,
                        "kind": kind,
                        "rule_id": rule_id,
                        "priority": new[rule_id],
                        "conditions": list(conditions) if conditions is not None else None,
                        "pattern": pattern,
                        "actions": list(actions),
                        "enabled": True,
                    },
                    keys=("user_id", "kind", "rule_id"),
                )
            )
        return None

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.delete(push_rules).where(
                    push_rules.c.user_id == user_id,
                    push_rules.c.kind == kind,
                    push_rules.c.rule_id == rule_id,
                )
            )
        return bool(result.rowcount)

    async def update_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        *,
        enabled: bool | None = None,
        actions: Sequence[Any] | None = None,
    ) -> bool:
        values: dict[str, Any] = {}
        if enabled is not None:
            values["enabled"] = enabled
        if actions is not None:
            values["actions"] = list(actions)
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(push_rules)
                .where(
                    push_rules.c.user_id == user_id,
                    push_rules.c.kind == kind,
                    push_rules.c.rule_id == rule_id,
                )
                .values(**values)
            )
        return bool(result.rowcount)

    async def change_default(
        self,
        user_id: str,
        rule_id: str,
        *,
        enabled: bool | None = None,
        actions: Sequence[Any] | None = None,
    ) -> None:
        row: dict[str, Any] = {"user_id": user_id, "rule_id": rule_id}
        update = []
        if enabled is not None:
            row["enabled"] = enabled
            update.append("enabled")
        if actions is not None:
            row["actions"] = list(actions)
            update.append("actions")
        async with self._db.write() as conn:
            await conn.execute(
                self._db.upsert(push_rule_defaults, row, keys=("user_id", "rule_id"), update=update)
            )

    # --- members, for evaluation -------------------------------------------------------------

    async def get_joined_members(self, room_id: str) -> list[tuple[str, str | None]]:
        """(user_id, display name in the room) of every joined member."""
        async with self._db.read() as conn:
            rows = (await conn.execute(_JOINED_MEMBERS, {"room_id": room_id})).all()
        return [(r.user_id, r.displayname) for r in rows]
