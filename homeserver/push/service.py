"""The push rules API (spec: "Push Rules: API") and each user's compiled rules, cached.

Every change is also written as the user's ``m.push_rules`` global account data (spec: "Push
Rules: Events"), which wakes their syncs and, through the bus, drops the compiled rules that
every worker holds for them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

from cachetools import LRUCache

from homeserver.caches.invalidations import PUSH_RULES as PUSH_RULES_CACHE
from homeserver.caches.invalidations import CacheInvalidations
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.push.evaluator import CompiledRuleset
from homeserver.push.rules import (
    DEFAULT_RULE_KINDS,
    PushRule,
    Ruleset,
    build_ruleset,
    check_kind,
    check_new_rule_id,
    check_pattern,
    check_scope,
    find_rule,
    normalize_actions,
    normalize_conditions,
    ruleset_json,
)
from homeserver.storage.push_rules import PushRuleStore, UserRules
from homeserver.sync.sources import GlobalSource
from homeserver.wakeups.bus import Bus, Wakeup

PUSH_RULES = "m.push_rules"
MAX_CACHED_USERS = 50_000


class ServerAccountData(Protocol):
    """Where ``m.push_rules`` is written (AccountDataService)."""

    async def set_server_account_data(
        self, user_id: UserID, room_id: RoomID | None, data_type: str, content: JsonDict
    ) -> None: ...


class PushRuleService:
    def __init__(
        self,
        store: PushRuleStore,
        account_data: ServerAccountData,
        bus: Bus,
        invalidations: CacheInvalidations | None = None,
    ) -> None:
        self._store = store
        self._account_data = account_data
        self._compiled: LRUCache[str, CompiledRuleset] = LRUCache(maxsize=MAX_CACHED_USERS)
        # Users who changed nothing share one compiled ruleset (the user ID is filled in at
        # evaluation).
        self._default = CompiledRuleset(build_ruleset(UserRules(), None))
        bus.subscribe(self._on_wakeup)
        self._invalidations = invalidations
        if invalidations is not None:
            # The wake-up is the fast path; the stream makes sure (a wake-up may be lost).
            invalidations.register(
                PUSH_RULES_CACHE,
                lambda user_id: self._compiled.pop(user_id, None),
                self._compiled.clear,
            )

    def _generation(self) -> int:
        inv = self._invalidations
        return 0 if inv is None else inv.generation(PUSH_RULES_CACHE)

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        # A change of push rules on any worker writes m.push_rules: account data.
        if wakeup.stream == Stream.ACCOUNT_DATA:
            for user_id in wakeup.user_ids:
                self._compiled.pop(user_id, None)

    # --- evaluation ------------------------------------------------------------------------

    async def compiled_for(self, user_ids: Collection[str]) -> dict[str, CompiledRuleset]:
        """Each user's compiled rules; the uncached are loaded in one go."""
        out: dict[str, CompiledRuleset] = {}
        missing = []
        for user_id in user_ids:
            found = self._compiled.get(user_id)
            if found is None:
                missing.append(user_id)
            else:
                out[user_id] = found
        if missing:
            generation = self._generation()
            stored = await self._store.get_user_rules(missing)
            keep = self._generation() == generation  # else rules read may predate a drop
            for user_id in missing:
                rules = stored.get(user_id)
                compiled = (
                    self._default if rules is None else CompiledRuleset(build_ruleset(rules, None))
                )
                out[user_id] = compiled
                if keep:
                    self._compiled[user_id] = compiled
        return out

    async def ruleset(self, user_id: UserID) -> Ruleset:
        stored = await self._store.get_user_rules([user_id])
        return build_ruleset(stored.get(user_id, UserRules()), user_id)

    # --- the API ---------------------------------------------------------------------------

    async def get_all(self, requester: Requester) -> JsonDict:
        """GET /pushrules/ and /pushrules/global/"""
        return ruleset_json(await self.ruleset(requester.user_id))

    async def get_rule(self, requester: Requester, scope: str, kind: str, rule_id: str) -> PushRule:
        check_scope(scope)
        check_kind(kind)
        rule = find_rule(await self.ruleset(requester.user_id), kind, rule_id)
        if rule is None:
            raise MatrixError(Codes.NOT_FOUND, "The push rule was not found")
        return rule

    async def put_rule(
        self,
        requester: Requester,
        scope: str,
        kind: str,
        rule_id: str,
        body: JsonDict,
        before: str | None,
        after: str | None,
    ) -> None:
        """PUT /pushrules/global/{kind}/{ruleId}"""
        check_scope(scope)
        check_kind(kind)
        check_new_rule_id(kind, rule_id)
        if "actions" not in body:
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: actions")
        actions = normalize_actions(body["actions"])
        conditions: Sequence[JsonDict] | None = None
        pattern: str | None = None
        if kind in ("override", "underride"):
            conditions = normalize_conditions(body.get("conditions", []))
        elif kind == "content":
            if "pattern" not in body:
                raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: pattern")
            pattern = check_pattern(body["pattern"])
        for relative in (before, after):
            if relative is not None and relative.startswith("."):
                raise MatrixError(
                    Codes.INVALID_PARAM, "Rules cannot be placed relative to server-default rules"
                )
        missing = await self._store.put_rule(
            requester.user_id,
            kind,
            rule_id,
            conditions=conditions,
            pattern=pattern,
            actions=actions,
            before=before,
            after=after,
        )
        if missing is not None:
            # spec's own example: 400 M_UNKNOWN "before/after rule not found".
            raise MatrixError(Codes.UNKNOWN, f"before/after rule not found: {missing}", status=400)
        await self._changed(requester.user_id)

    async def delete_rule(self, requester: Requester, scope: str, kind: str, rule_id: str) -> None:
        check_scope(scope)
        check_kind(kind)
        if rule_id.startswith("."):
            await self.get_rule(requester, scope, kind, rule_id)  # 404 when unknown
            raise MatrixError(Codes.INVALID_PARAM, "Server-default rules cannot be deleted")
        if not await self._store.delete_rule(requester.user_id, kind, rule_id):
            raise MatrixError(Codes.NOT_FOUND, "The push rule was not found")
        await self._changed(requester.user_id)

    async def set_enabled(
        self, requester: Requester, scope: str, kind: str, rule_id: str, enabled: bool
    ) -> None:
        await self._update(requester, scope, kind, rule_id, enabled=enabled)

    async def set_actions(
        self, requester: Requester, scope: str, kind: str, rule_id: str, actions: Any
    ) -> None:
        await self._update(requester, scope, kind, rule_id, actions=normalize_actions(actions))

    async def _update(
        self,
        requester: Requester,
        scope: str,
        kind: str,
        rule_id: str,
        *,
        enabled: bool | None = None,
        actions: Sequence[Any] | None = None,
    ) -> None:
        check_scope(scope)
        check_kind(kind)
        if DEFAULT_RULE_KINDS.get(rule_id) == kind:
            await self._store.change_default(
                requester.user_id, rule_id, enabled=enabled, actions=actions
            )
        elif rule_id.startswith(".") or not await self._store.update_rule(
            requester.user_id, kind, rule_id, enabled=enabled, actions=actions
        ):
            raise MatrixError(Codes.NOT_FOUND, "The push rule was not found")
        await self._changed(requester.user_id)

    async def _changed(self, user_id: UserID) -> None:
        self._compiled.pop(user_id, None)
        content = {"global": ruleset_json(await self.ruleset(user_id))}
        await self._account_data.set_server_account_data(user_id, None, PUSH_RULES, content)


class AccountDataWithPushRules:
    """The sync's top-level ``account_data``, with ``m.push_rules`` in every initial sync
    (clients expect it) even for users who never changed a rule."""

    def __init__(self, inner: GlobalSource, rules: PushRuleService) -> None:
        self._inner = inner
        self._rules = rules

    async def global_events(
        self, requester: Requester, since: StreamToken | None, now: StreamToken
    ) -> list[JsonDict]:
        events = await self._inner.global_events(requester, since, now)
        if since is None and not any(e.get("type") == PUSH_RULES for e in events):
            events.append(
                {"type": PUSH_RULES, "content": {"global": await self._rules.get_all(requester)}}
            )
        return events
