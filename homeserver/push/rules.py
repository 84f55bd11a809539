"""Push rules (spec: "Push Rules"): the server-default set, validation, a user's ruleset.

A user's rules are their own rules (stored, ordered by priority within a kind) and the
server-default rules, whose ``enabled`` and ``actions`` the user may change but which
cannot be deleted nor moved. ``.m.rule.master`` always comes first; every other default
rule comes after the user's rules of its kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict
from homeserver.storage.push_rules import DefaultChange, StoredRule, UserRules

KINDS = ("override", "content", "room", "sender", "underride")
# In server-default rules, where the owner's user ID goes (the spec's own placeholder).
USER_ID = "[the user's Matrix ID]"
# spec: "Historical Actions": clients and servers MUST ignore (strip) these.
HISTORICAL_ACTIONS = frozenset({"dont_notify", "coalesce"})
MAX_RULE_ID_BYTES = 255  # ours: rule IDs are path segments and primary keys
MAX_PATTERN_BYTES = 1024  # ours: a glob is compiled to a regular expression
MAX_CONDITIONS = 64
MAX_ACTIONS = 32
_ROOM_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]{1,9})\Z")


def _event_match(key: str, pattern: str) -> JsonDict:
    return {"kind": "event_match", "key": key, "pattern": pattern}


_SOUND_DEFAULT: JsonDict = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT: JsonDict = {"set_tweak": "highlight"}

# spec, "Predefined Rules" (v1.17+: the legacy body-based mention rules are gone), in order.
DEFAULT_OVERRIDE: tuple[JsonDict, ...] = (
    {"rule_id": ".m.rule.master", "enabled": False, "conditions": [], "actions": []},
    {
        "rule_id": ".m.rule.suppress_notices",
        "conditions": [_event_match("content.msgtype", "m.notice")],
        "actions": [],
    },
    {
        "rule_id": ".m.rule.invite_for_me",
        "conditions": [
            _event_match("type", "m.room.member"),
            _event_match("content.membership", "invite"),
            _event_match("state_key", USER_ID),
        ],
        "actions": ["notify", _SOUND_DEFAULT],
    },
    {
        "rule_id": ".m.rule.member_event",
        "conditions": [_event_match("type", "m.room.member")],
        "actions": [],
    },
    {
        "rule_id": ".m.rule.is_user_mention",
        "conditions": [
            {
                "kind": "event_property_contains",
                "key": "content.m\\.mentions.user_ids",
                "value": USER_ID,
            }
        ],
        "actions": ["notify", _SOUND_DEFAULT, _HIGHLIGHT],
    },
    {
        "rule_id": ".m.rule.is_room_mention",
        "conditions": [
            {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
            {"kind": "sender_notification_permission", "key": "room"},
        ],
        "actions": ["notify", _HIGHLIGHT],
    },
    {
        "rule_id": ".m.rule.tombstone",
        "conditions": [_event_match("type", "m.room.tombstone"), _event_match("state_key", "")],
        "actions": ["notify", _HIGHLIGHT],
    },
    {
        "rule_id": ".m.rule.reaction",
        "conditions": [_event_match("type", "m.reaction")],
        "actions": [],
    },
    {
        "rule_id": ".m.rule.room.server_acl",
        "conditions": [_event_match("type", "m.room.server_acl"), _event_match("state_key", "")],
        "actions": [],
    },
    {
        "rule_id": ".m.rule.suppress_edits",
        "conditions": [
            {
                "kind": "event_property_is",
                "key": "content.m\\.relates_to.rel_type",
                "value": "m.replace",
            }
        ],
        "actions": [],
    },
)
DEFAULT_UNDERRIDE: tuple[JsonDict, ...] = (
    {
        "rule_id": ".m.rule.call",
        "conditions": [_event_match("type", "m.call.invite")],
        "actions": ["notify", {"set_tweak": "sound", "value": "ring"}],
    },
    {
        "rule_id": ".m.rule.encrypted_room_one_to_one",
        "conditions": [
            {"kind": "room_member_count", "is": "2"},
            _event_match("type", "m.room.encrypted"),
        ],
        "actions": ["notify", _SOUND_DEFAULT],
    },
    {
        "rule_id": ".m.rule.room_one_to_one",
        "conditions": [
            {"kind": "room_member_count", "is": "2"},
            _event_match("type", "m.room.message"),
        ],
        "actions": ["notify", _SOUND_DEFAULT],
    },
    {
        "rule_id": ".m.rule.message",
        "conditions": [_event_match("type", "m.room.message")],
        "actions": ["notify"],
    },
    {
        "rule_id": ".m.rule.encrypted",
        "conditions": [_event_match("type", "m.room.encrypted")],
        "actions": ["notify"],
    },
)
DEFAULT_RULE_KINDS: dict[str, str] = {
    **{r["rule_id"]: "override" for r in DEFAULT_OVERRIDE},
    **{r["rule_id"]: "underride" for r in DEFAULT_UNDERRIDE},
}
MASTER = ".m.rule.master"


@dataclass(frozen=True, slots=True)
class PushRule:
    kind: str
    rule_id: str
    actions: tuple[Any, ...]
    enabled: bool
    default: bool
    conditions: tuple[JsonDict, ...] | None = None  # override and underride
    pattern: str | None = None  # content

    def to_json(self) -> JsonDict:
        out: JsonDict = {
            "rule_id": self.rule_id,
            "default": self.default,
            "enabled": self.enabled,
            "actions": list(self.actions),
        }
        if self.conditions is not None:
            out["conditions"] = [dict(c) for c in self.conditions]
        if self.pattern is not None:
            out["pattern"] = self.pattern
        return out


Ruleset = dict[str, list[PushRule]]


def _substitute(value: Any, user_id: str) -> Any:
    if value == USER_ID:
        return user_id
    if isinstance(value, dict):
        return {k: _substitute(v, user_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, user_id) for v in value]
    return value


def _default_rule(
    kind: str, template: JsonDict, change: DefaultChange | None, user_id: str | None
) -> PushRule:
    conditions = template["conditions"]
    if user_id is not None:
        conditions = _substitute(conditions, user_id)
    enabled = template.get("enabled", True)
    actions = tuple(template["actions"])
    if change is not None:
        enabled = change.enabled if change.enabled is not None else enabled
        actions = change.actions if change.actions is not None else actions
    return PushRule(kind, template["rule_id"], actions, enabled, True, conditions=tuple(conditions))


def build_ruleset(rules: UserRules, user_id: str | None) -> Ruleset:
    """The user's rules in evaluation order, by kind. ``user_id`` None keeps the placeholder
    in default rules (the evaluator substitutes the member it evaluates for)."""
    changes = rules.defaults or {}
    out: Ruleset = {kind: [] for kind in KINDS}
    mine = sorted(rules.rules, key=lambda r: (-r.priority, r.rule_id))
    overrides = [
        _default_rule("override", t, changes.get(t["rule_id"]), user_id) for t in DEFAULT_OVERRIDE
    ]
    out["override"].append(overrides[0])  # .m.rule.master comes before everything
    for rule in mine:
        out[rule.kind].append(
            PushRule(
                rule.kind,
                rule.rule_id,
                rule.actions,
                rule.enabled,
                False,
                conditions=rule.conditions,
                pattern=rule.pattern,
            )
        )
    out["override"].extend(overrides[1:])
    out["underride"].extend(
        _default_rule("underride", t, changes.get(t["rule_id"]), user_id) for t in DEFAULT_UNDERRIDE
    )
    return out


def ruleset_json(ruleset: Ruleset) -> JsonDict:
    """The ``global`` ruleset of GET /pushrules/ and of ``m.push_rules``."""
    return {kind: [r.to_json() for r in ruleset[kind]] for kind in KINDS}


def find_rule(ruleset: Ruleset, kind: str, rule_id: str) -> PushRule | None:
    for rule in ruleset.get(kind, ()):
        if rule.rule_id == rule_id:
            return rule
    return None


# --- validation (the /pushrules API) ---------------------------------------------------------


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise MatrixError(
            Codes.INVALID_PARAM, f"Unknown push rule kind {kind!r}; one of {', '.join(KINDS)}"
        )


def check_scope(scope: str) -> None:
    if scope != "global":
        raise MatrixError(Codes.INVALID_PARAM, "The only push rule scope is 'global'")


def check_new_rule_id(kind: str, rule_id: str) -> None:
    """spec, PUT /pushrules: rule IDs starting with "." are the server's; no "/" nor "\\"."""
    if not rule_id:
        raise MatrixError(Codes.INVALID_PARAM, "The rule ID is empty")
    if rule_id.startswith("."):
        raise MatrixError(
            Codes.INVALID_PARAM, "Rule IDs starting with '.' are reserved for server-default rules"
        )
    if "/" in rule_id or "\\" in rule_id:
        raise MatrixError(Codes.INVALID_PARAM, "Rule IDs may not contain '/' or '\\'")
    if len(rule_id.encode()) > MAX_RULE_ID_BYTES:
        raise MatrixError(
            Codes.INVALID_PARAM, f"The rule ID is longer than {MAX_RULE_ID_BYTES} bytes"
        )
    # spec: a room rule's ID is the room ID it matches, a sender rule's the user ID. Another
    # ID is kept (as Synapse keeps it; SyTest names room rules by alias) and never matches.


def normalize_actions(actions: Any) -> tuple[Any, ...]:
    """Validate an ``actions`` array; historical actions are stripped (spec)."""
    if not isinstance(actions, list):
        raise MatrixError(Codes.BAD_JSON, "actions must be an array")
    if len(actions) > MAX_ACTIONS:
        raise MatrixError(Codes.BAD_JSON, f"At most {MAX_ACTIONS} actions")
    out: list[Any] = []
    for action in actions:
        if isinstance(action, str):
            if action in HISTORICAL_ACTIONS:
                continue
            if action != "notify":
                raise MatrixError(Codes.BAD_JSON, f"Unknown action {action!r}")
            out.append(action)
        elif isinstance(action, dict):
            tweak = action.get("set_tweak")
            if not isinstance(tweak, str) or not tweak:
                raise MatrixError(Codes.BAD_JSON, "An object action must have a string set_tweak")
            if tweak == "highlight" and "value" in action and not isinstance(action["value"], bool):
                raise MatrixError(Codes.BAD_JSON, "The highlight tweak's value is a boolean")
            if tweak == "sound" and not isinstance(action.get("value"), str):
                raise MatrixError(Codes.BAD_JSON, "The sound tweak's value is a string")
            out.append({k: v for k, v in action.items() if k in ("set_tweak", "value")})
        else:
            raise MatrixError(Codes.BAD_JSON, "An action is a string or an object")
    return tuple(out)


def _is_scalar(value: Any) -> bool:
    """spec: non-compound canonical JSON values: strings, safe integers, booleans, null."""
    if value is None or isinstance(value, (str, bool)):
        return True
    return isinstance(value, int) and -(2**53) + 1 <= value <= 2**53 - 1


def normalize_conditions(conditions: Any) -> tuple[JsonDict, ...]:
    """Validate the conditions of an override or underride rule.

    Unknown kinds are kept (spec: they never match, which disables the rule); a known kind
    without its parameters is refused, as it could never work.
    """
    if not isinstance(conditions, list):
        raise MatrixError(Codes.BAD_JSON, "conditions must be an array")
    if len(conditions) > MAX_CONDITIONS:
        raise MatrixError(Codes.BAD_JSON, f"At most {MAX_CONDITIONS} conditions")
    out: list[JsonDict] = []
    for c in conditions:
        if not isinstance(c, dict) or not isinstance(c.get("kind"), str):
            raise MatrixError(Codes.BAD_JSON, "A condition is an object with a string kind")
        kind = c["kind"]
        if kind in (
            "event_match",
            "event_property_is",
            "event_property_contains",
            "sender_notification_permission",
        ) and not isinstance(c.get("key"), str):
            raise MatrixError(Codes.BAD_JSON, f"A {kind} condition needs a string key")
        if kind == "event_match":
            check_pattern(c.get("pattern"))
        elif kind in ("event_property_is", "event_property_contains"):
            if "value" not in c or not _is_scalar(c["value"]):
                raise MatrixError(
                    Codes.BAD_JSON,
                    f"A {kind} condition needs a value: a string, integer, boolean or null",
                )
        elif kind == "room_member_count":
            if not isinstance(c.get("is"), str) or not _ROOM_MEMBER_COUNT.match(c["is"]):
                raise MatrixError(
                    Codes.BAD_JSON,
                    "room_member_count needs 'is': a number "
                    "with an optional ==, <, >, <= or >= prefix",
                )
        out.append(c)
    return tuple(out)


def check_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str):
        raise MatrixError(Codes.BAD_JSON, "pattern must be a string")
    if len(pattern.encode()) > MAX_PATTERN_BYTES:
        raise MatrixError(Codes.BAD_JSON, f"pattern is longer than {MAX_PATTERN_BYTES} bytes")
    return pattern


def parse_member_count(spec: str) -> tuple[str, int] | None:
    m = _ROOM_MEMBER_COUNT.match(spec)
    if m is None:
        return None
    return m.group(1) or "==", int(m.group(2))


def all_rule_ids(rules: Iterable[StoredRule], kind: str) -> Sequence[str]:
    return [
        r.rule_id for r in sorted(rules, key=lambda r: (-r.priority, r.rule_id)) if r.kind == kind
    ]
