"""Push rule evaluation: rules compiled once per user, an event prepared once for all members.

Evaluation is on the send path (once per event per local member), so the work is split:
- a user's ruleset is compiled once (globs to regular expressions, paths split) and cached;
  users who changed nothing share one compiled default ruleset;
- an event is prepared once (``EventContext``): property lookups and every condition and rule
  that does not depend on the member are memoized, so for the second and later members most
  rules cost a dictionary lookup. Only conditions naming the member (their user ID, their
  display name) run per member.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from homeserver.core.types import JsonDict
from homeserver.events.auth import get_notification_level
from homeserver.push.rules import (
    KINDS,
    USER_ID,
    PushRule,
    Ruleset,
    parse_member_count,
)

_MISSING = object()
# spec: a word boundary in content.body is any character outside [A-Za-z0-9_].
_WORD = "A-Za-z0-9_"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a matching rule asks for. Only notifying outcomes are stored."""

    notify: bool
    highlight: bool
    actions: tuple[Any, ...]
    actions_json: str  # serialized once, stored for every member it applies to

    @property
    def tweaks(self) -> JsonDict:
        return tweaks_of(self.actions)


def tweaks_of(actions: Sequence[Any]) -> JsonDict:
    tweaks: JsonDict = {}
    for action in actions:
        if isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            name = action["set_tweak"]
            # spec: a highlight tweak without a value means true.
            tweaks[name] = action.get("value", True if name == "highlight" else None)
    return tweaks


def outcome_of(actions: Sequence[Any]) -> Outcome:
    notify = "notify" in actions
    highlight = tweaks_of(actions).get("highlight") is True
    return Outcome(notify, highlight, tuple(actions), orjson.dumps(list(actions)).decode())


class EventContext:
    """One event, ready to be evaluated against every member's rules."""

    __slots__ = ("pdu", "member_count", "sender_power", "power_levels", "memo", "_values", "_sets")

    def __init__(
        self,
        pdu: JsonDict,
        event_id: str,
        *,
        member_count: int,
        sender_power: float,
        power_levels: JsonDict | None,
    ) -> None:
        self.pdu = {**pdu, "event_id": event_id}
        self.member_count = member_count
        self.sender_power = sender_power
        self.power_levels = power_levels
        # Results of conditions and rules that do not depend on the member, by identity.
        self.memo: dict[int, bool] = {}
        self._values: dict[tuple[str, ...], Any] = {}
        self._sets: dict[tuple[str, ...], frozenset[tuple[type, Any]] | None] = {}

    def value(self, path: tuple[str, ...]) -> Any:
        """The property at ``path``, or ``_MISSING``."""
        found = self._values.get(path, _MISSING)
        if found is _MISSING:
            node: Any = self.pdu
            for part in path:
                if not isinstance(node, dict) or part not in node:
                    node = _MISSING
                    break
                node = node[part]
            self._values[path] = found = node
        return found

    def scalar_set(self, path: tuple[str, ...]) -> frozenset[tuple[type, Any]] | None:
        """The array at ``path`` as a set of typed scalars (None when it is not an array)."""
        if path not in self._sets:
            array = self.value(path)
            self._sets[path] = (
                frozenset(
                    (type(v), v) for v in array if v is None or isinstance(v, (str, int, bool))
                )
                if isinstance(array, list)
                else None
            )
        return self._sets[path]


# --- conditions --------------------------------------------------------------------------------

Independent = Callable[[EventContext], bool]
Dependent = Callable[[EventContext, str, "str | None"], bool]


@dataclass(frozen=True, slots=True)
class Condition:
    """``independent``: what holds for every member alike (for a condition naming the
    member, what must hold for any member to match: a cheap pre-check); ``dependent``: the
    per-member part. A condition holds when both (those set) do."""

    independent: Independent | None
    dependent: Dependent | None


_NEVER = Condition(lambda ctx: False, None)


def split_path(key: str) -> tuple[str, ...]:
    """spec, "Dot-separated property paths": ``\\.`` is a dot, ``\\\\`` a backslash, any
    other backslash is literal."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


@lru_cache(maxsize=4096)
def glob_regex(pattern: str, words: bool) -> re.Pattern[str]:
    """spec, glob-style matching: ``*`` any run, ``?`` one character; case-insensitive.
    ``words``: match a substring that starts and ends at word boundaries (content.body)."""
    body = "".join(".*?" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if words:
        body = f"(?<![{_WORD}]){body}(?![{_WORD}])"
    return re.compile(body, re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=4096)
def _display_name_regex(name: str) -> re.Pattern[str]:
    return re.compile(f"(?<![{_WORD}]){re.escape(name)}(?![{_WORD}])", re.IGNORECASE)


def _same(a: Any, b: Any) -> bool:
    """Exact equality of JSON scalars: ``true`` is not ``1`` and ``"1"`` is not ``1``."""
    return type(a) is type(b) and a == b


def _event_match(c: JsonDict) -> Condition:
    key, pattern = c.get("key"), c.get("pattern")
    if not isinstance(key, str) or not isinstance(pattern, str):
        return _NEVER
    path = split_path(key)
    words = key == "content.body"

    def matcher(pattern: str) -> Callable[[Any], bool]:
        regex = glob_regex(pattern, words)
        if words:
            return lambda v: isinstance(v, str) and regex.search(v) is not None
        return lambda v: isinstance(v, str) and regex.fullmatch(v) is not None

    if USER_ID in pattern:

        def dependent(ctx: EventContext, user_id: str, _dn: str | None) -> bool:
            return matcher(pattern.replace(USER_ID, user_id))(ctx.value(path))

        return Condition(lambda ctx: isinstance(ctx.value(path), str), dependent)
    match = matcher(pattern)
    return Condition(lambda ctx: match(ctx.value(path)), None)


def _property_is(c: JsonDict) -> Condition:
    key, wanted = c.get("key"), c.get("value")
    if not isinstance(key, str) or "value" not in c:
        return _NEVER
    path = split_path(key)
    if wanted == USER_ID:
        return Condition(
            lambda ctx: isinstance(ctx.value(path), str),
            lambda ctx, user_id, _dn: _same(ctx.value(path), user_id),
        )
    return Condition(lambda ctx: _same(ctx.value(path), wanted), None)


def _property_contains(c: JsonDict) -> Condition:
    key, wanted = c.get("key"), c.get("value")
    if not isinstance(key, str) or "value" not in c or isinstance(wanted, (list, dict)):
        return _NEVER
    path = split_path(key)

    if wanted == USER_ID:

        def dependent(ctx: EventContext, user_id: str, _dn: str | None) -> bool:
            found = ctx.scalar_set(path)
            return found is not None and (str, user_id) in found

        return Condition(lambda ctx: bool(ctx.scalar_set(path)), dependent)
    item = (type(wanted), wanted)

    def independent(ctx: EventContext) -> bool:
        found = ctx.scalar_set(path)
        return found is not None and item in found

    return Condition(independent, None)


def _contains_display_name(c: JsonDict) -> Condition:
    body_path = ("content", "body")

    def dependent(ctx: EventContext, _user_id: str, display_name: str | None) -> bool:
        body = ctx.value(body_path)
        if not display_name or not isinstance(body, str):
            return False
        return _display_name_regex(display_name).search(body) is not None

    return Condition(lambda ctx: isinstance(ctx.value(body_path), str), dependent)


_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "==": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


def _member_count(c: JsonDict) -> Condition:
    parsed = parse_member_count(c["is"]) if isinstance(c.get("is"), str) else None
    if parsed is None:
        return _NEVER
    op, number = parsed
    compare = _COMPARE[op]
    return Condition(lambda ctx: compare(ctx.member_count, number), None)


def _sender_permission(c: JsonDict) -> Condition:
    key = c.get("key")
    if not isinstance(key, str):
        return _NEVER
    return Condition(
        lambda ctx: ctx.sender_power >= get_notification_level(ctx.power_levels, key), None
    )


_BUILDERS: dict[str, Callable[[JsonDict], Condition]] = {
    "event_match": _event_match,
    "event_property_is": _property_is,
    "event_property_contains": _property_contains,
    "contains_display_name": _contains_display_name,
    "room_member_count": _member_count,
    "sender_notification_permission": _sender_permission,
}


@lru_cache(maxsize=8192)
def _compile_condition_cached(canonical: str) -> Condition:
    c = orjson.loads(canonical)
    kind = c.get("kind") if isinstance(c, dict) else None
    builder = _BUILDERS.get(kind) if isinstance(kind, str) else None
    # spec: "Unrecognised conditions MUST NOT match any events".
    return builder(c) if builder is not None else _NEVER


def compile_condition(c: JsonDict) -> Condition:
    """Equal conditions compile to the same object, so members share their memoized result."""
    return _compile_condition_cached(orjson.dumps(c, option=orjson.OPT_SORT_KEYS).decode())


# --- rules and rulesets ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule_id: str
    independent: tuple[Independent, ...]
    dependent: tuple[Dependent, ...]
    outcome: Outcome

    def matches(self, ctx: EventContext, user_id: str, display_name: str | None) -> bool:
        memo = ctx.memo
        for cond in self.independent:
            key = id(cond)
            ok = memo.get(key)
            if ok is None:
                ok = memo[key] = cond(ctx)
            if not ok:
                return False
        return all(cond(ctx, user_id, display_name) for cond in self.dependent)


@lru_cache(maxsize=8192)
def _outcome_cached(actions_json: str) -> Outcome:
    return outcome_of(orjson.loads(actions_json))


def _implicit_conditions(rule: PushRule) -> list[JsonDict]:
    """Room, sender and content rules have their conditions in their ID or pattern."""
    if rule.kind == "room":
        return [{"kind": "event_match", "key": "room_id", "pattern": rule.rule_id}]
    if rule.kind == "sender":
        return [{"kind": "event_match", "key": "sender", "pattern": rule.rule_id}]
    if rule.kind == "content":
        return [{"kind": "event_match", "key": "content.body", "pattern": rule.pattern or ""}]
    return list(rule.conditions or ())


def compile_rule(rule: PushRule) -> CompiledRule:
    independent: list[Independent] = []
    dependent: list[Dependent] = []
    for c in _implicit_conditions(rule):
        compiled = compile_condition(c)
        if compiled.independent is not None:
            independent.append(compiled.independent)
        if compiled.dependent is not None:
            dependent.append(compiled.dependent)
    outcome = _outcome_cached(orjson.dumps(list(rule.actions)).decode())
    return CompiledRule(rule.rule_id, tuple(independent), tuple(dependent), outcome)


class CompiledRuleset:
    """A user's enabled rules in evaluation order."""

    __slots__ = ("rules",)

    def __init__(self, ruleset: Ruleset) -> None:
        self.rules = tuple(
            compile_rule(rule) for kind in KINDS for rule in ruleset[kind] if rule.enabled
        )

    def evaluate_many(
        self, ctx: EventContext, members: Sequence[tuple[str, str | None]]
    ) -> list[tuple[str, Outcome]]:
        """``evaluate`` for every member sharing this ruleset, rule by rule: a rule that does
        not depend on the member decides for all the members still undecided at once."""
        out: list[tuple[str, Outcome]] = []
        remaining = list(members)
        memo = ctx.memo
        for rule in self.rules:
            independent_ok = True
            for cond in rule.independent:
                key = id(cond)
                ok = memo.get(key)
                if ok is None:
                    ok = memo[key] = cond(ctx)
                if not ok:
                    independent_ok = False
                    break
            if not independent_ok:
                continue
            if not rule.dependent:
                out.extend((user_id, rule.outcome) for user_id, _ in remaining)
                return out
            undecided = []
            outcome = rule.outcome
            if len(rule.dependent) == 1:
                only = rule.dependent[0]
                for member in remaining:
                    if only(ctx, member[0], member[1]):
                        out.append((member[0], outcome))
                    else:
                        undecided.append(member)
            else:
                for member in remaining:
                    if all(cond(ctx, member[0], member[1]) for cond in rule.dependent):
                        out.append((member[0], outcome))
                    else:
                        undecided.append(member)
            remaining = undecided
            if not remaining:
                break
        return out

    def evaluate(self, ctx: EventContext, user_id: str, display_name: str | None) -> Outcome | None:
        """The outcome of the first matching rule (None: no rule matched)."""
        memo = ctx.memo
        for rule in self.rules:
            if not rule.dependent:
                key = id(rule)
                ok = memo.get(key)
                if ok is None:
                    ok = memo[key] = rule.matches(ctx, user_id, display_name)
            else:
                ok = rule.matches(ctx, user_id, display_name)
            if ok:
                return rule.outcome
        return None
