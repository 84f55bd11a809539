"""Push rule evaluation against the spec's conditions and default rules."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.core.errors import MatrixError
from homeserver.push.evaluator import CompiledRuleset, EventContext, Outcome, split_path
from homeserver.push.rules import (
    DEFAULT_OVERRIDE,
    DEFAULT_UNDERRIDE,
    build_ruleset,
    check_new_rule_id,
    normalize_actions,
    normalize_conditions,
    ruleset_json,
)
from homeserver.storage.push_rules import DefaultChange, StoredRule, UserRules

ALICE = "@alice:test"
BOB = "@bob:test"


def _msg(body: str = "hello", **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "sender": BOB,
        "room_id": "!r:test",
        "content": {"msgtype": "m.text", "body": body, **content},
    }


def evaluate(
    pdu: dict[str, Any],
    rules: UserRules | None = None,
    *,
    user: str = ALICE,
    display_name: str | None = None,
    members: int = 3,
    power: float = 0,
    power_levels: dict[str, Any] | None = None,
) -> Outcome | None:
    compiled = CompiledRuleset(build_ruleset(rules or UserRules(), None))
    ctx = EventContext(
        pdu, "$e", member_count=members, sender_power=power, power_levels=power_levels
    )
    return compiled.evaluate(ctx, user, display_name)


def _tweaks(outcome: Outcome | None) -> dict[str, Any] | None:
    return None if outcome is None or not outcome.notify else outcome.tweaks


def _override(
    rule_id: str,
    conditions: list[dict[str, Any]],
    actions: list[Any] | None = None,
    priority: int = 1,
) -> StoredRule:
    return StoredRule(
        "override", rule_id, priority, tuple(actions or ["notify"]), True, tuple(conditions), None
    )


def test_default_rules_are_the_spec_set_in_order() -> None:
    body = ruleset_json(build_ruleset(UserRules(), ALICE))
    assert [r["rule_id"] for r in body["override"]] == [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
        ".m.rule.tombstone",
        ".m.rule.reaction",
        ".m.rule.room.server_acl",
        ".m.rule.suppress_edits",
    ]
    assert [r["rule_id"] for r in body["underride"]] == [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ]
    assert body["content"] == body["room"] == body["sender"] == []
    master = body["override"][0]
    assert master == {
        "rule_id": ".m.rule.master",
        "default": True,
        "enabled": False,
        "conditions": [],
        "actions": [],
    }
    mention = body["override"][4]
    assert mention["conditions"] == [
        {"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": ALICE}
    ]
    assert len(DEFAULT_OVERRIDE) + len(DEFAULT_UNDERRIDE) == 15


def test_messages_notify_and_one_to_one_rooms_ring() -> None:
    assert _tweaks(evaluate(_msg())) == {}
    assert _tweaks(evaluate(_msg(), members=2)) == {"sound": "default"}
    notice = evaluate(_msg(msgtype="m.notice"))
    assert notice is not None and not notice.notify  # .m.rule.suppress_notices
    assert (
        evaluate(
            {"type": "m.room.topic", "state_key": "", "sender": BOB, "content": {"topic": "x"}}
        )
        is None
    )


def test_encrypted_and_calls() -> None:
    encrypted = {"type": "m.room.encrypted", "sender": BOB, "content": {"ciphertext": "x"}}
    assert _tweaks(evaluate(encrypted)) == {}
    assert _tweaks(evaluate(encrypted, members=2)) == {"sound": "default"}
    call = {"type": "m.call.invite", "sender": BOB, "content": {}}
    assert _tweaks(evaluate(call)) == {"sound": "ring"}


def test_intentional_mentions() -> None:
    mentioned = _msg("hi", **{"m.mentions": {"user_ids": [ALICE]}})
    outcome = evaluate(mentioned)
    assert outcome is not None and outcome.highlight
    assert _tweaks(outcome) == {"sound": "default", "highlight": True}
    # Someone else's mention is a plain message for Alice; a body naming her is not a mention.
    assert _tweaks(evaluate(mentioned, user="@carol:test")) == {}
    assert _tweaks(evaluate(_msg("@alice:test hello"))) == {}
    # @room needs the sender's power to reach notifications.room (50 by default).
    room = _msg("all", **{"m.mentions": {"room": True}})
    assert _tweaks(evaluate(room, power=50)) == {"highlight": True}
    assert _tweaks(evaluate(room, power=49)) == {}
    assert _tweaks(evaluate(room, power=10, power_levels={"notifications": {"room": 10}})) == {
        "highlight": True
    }
    assert _tweaks(evaluate(_msg("x", **{"m.mentions": {"room": "true"}}), power=100)) == {}


def test_invites_members_tombstones_reactions_edits_acls() -> None:
    invite = {
        "type": "m.room.member",
        "state_key": ALICE,
        "sender": BOB,
        "content": {"membership": "invite"},
    }
    assert _tweaks(evaluate(invite)) == {"sound": "default"}
    other = {**invite, "state_key": "@carol:test"}
    assert _tweaks(evaluate(other)) is None  # .m.rule.member_event
    tombstone = {
        "type": "m.room.tombstone",
        "state_key": "",
        "sender": BOB,
        "content": {"replacement_room": "!n:test"},
    }
    assert _tweaks(evaluate(tombstone)) == {"highlight": True}
    assert _tweaks(evaluate({**tombstone, "state_key": "x"})) is None
    reaction = {"type": "m.reaction", "sender": BOB, "content": {}}
    assert _tweaks(evaluate(reaction)) is None
    edit = _msg("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert _tweaks(evaluate(edit)) is None
    acl = {"type": "m.room.server_acl", "state_key": "", "sender": BOB, "content": {}}
    assert _tweaks(evaluate(acl)) is None


def test_master_rule_and_changed_defaults() -> None:
    muted = UserRules(defaults={".m.rule.master": DefaultChange(True, None)})
    assert _tweaks(evaluate(_msg(), muted)) is None
    loud = UserRules(
        defaults={
            ".m.rule.message": DefaultChange(
                None, ("notify", {"set_tweak": "sound", "value": "bing"})
            )
        }
    )
    assert _tweaks(evaluate(_msg(), loud)) == {"sound": "bing"}
    off = UserRules(defaults={".m.rule.message": DefaultChange(False, None)})
    assert _tweaks(evaluate(_msg(), off)) is None


@pytest.mark.parametrize(
    ("pattern", "body", "matches"),
    [
        ("cake", "I like cake.", True),
        ("cake", "cakes are fine", False),  # whole words only
        ("cake", "CAKE!", True),  # case-insensitive
        ("ex*ple", "An example event.", True),
        ("ex*ple", "exple", True),
        ("ex*ple", "An exciting triple-whammy", True),  # spans words; "-" is a boundary
        ("ex*ple", "an exampler", False),
        ("c?t", "a cat", True),
        ("c?t", "a ct", False),
        ("tea", "snake_tea", False),  # "_" is a word character
        ("tea", "thé tea", True),
    ],
)
def test_content_rules_match_words(pattern: str, body: str, matches: bool) -> None:
    rules = UserRules(
        rules=(
            StoredRule(
                "content", "kw", 1, ("notify", {"set_tweak": "highlight"}), True, None, pattern
            ),
        )
    )
    outcome = evaluate(_msg(body), rules)
    assert (outcome is not None and outcome.highlight) is matches


def test_event_match_semantics() -> None:
    def matches(key: str, pattern: str, pdu: dict[str, Any]) -> bool:
        rules = UserRules(
            rules=(
                _override(
                    "r",
                    [{"kind": "event_match", "key": key, "pattern": pattern}],
                    ["notify", {"set_tweak": "sound", "value": "x"}],
                ),
            )
        )
        return _tweaks(evaluate(pdu, rules)) == {"sound": "x"}

    topic = {"type": "m.room.topic", "sender": BOB, "state_key": "", "content": {}}
    assert matches("content.topic", "lunc?*", {**topic, "content": {"topic": "Lunch plans"}})
    assert matches("content.topic", "lunc?*", {**topic, "content": {"topic": "LUNCH"}})
    assert not matches("content.topic", "lunc?*", {**topic, "content": {"topic": " lunch"}})
    assert not matches("content.topic", "lunc?*", {**topic, "content": {"topic": "lunc"}})
    assert not matches("content.topic", "*", {**topic, "content": {"topic": None}})
    assert not matches("content.topic", "*", {**topic, "content": {"topic": 3}})
    assert not matches("content.topic", "*", topic)  # absent
    assert matches("content.topic", "a.b", {**topic, "content": {"topic": "a.b"}})
    assert not matches("content.topic", "a.b", {**topic, "content": {"topic": "aXb"}})
    assert matches("type", "m.room.*", topic)
    assert matches("event_id", "$e", topic)


def test_property_paths_and_exact_values() -> None:
    assert split_path("content.m\\.relates_to.rel_type") == ("content", "m.relates_to", "rel_type")
    assert split_path("content.m\\\\foo") == ("content", "m\\foo")
    assert split_path("content.a\\xb") == ("content", "a\\xb")

    def is_(value: Any, content: dict[str, Any], key: str = "content.m\\.federate") -> bool:
        rules = UserRules(
            rules=(
                _override(
                    "r",
                    [{"kind": "event_property_is", "key": key, "value": value}],
                    ["notify", {"set_tweak": "highlight"}],
                ),
            )
        )
        outcome = evaluate(
            {"type": "m.room.create", "sender": BOB, "state_key": "", "content": content}, rules
        )
        return outcome is not None and outcome.highlight

    assert is_(True, {"m.federate": True})
    assert not is_(True, {"m.federate": "true"})
    assert not is_(True, {"m.federate": 1})
    assert not is_(1, {"m.federate": True})
    assert is_(None, {"m.federate": None})
    assert not is_(None, {})
    assert is_("x", {"a\\b": "x"}, key="content.a\\\\b")

    def contains(value: Any, array: Any) -> bool:
        rules = UserRules(
            rules=(
                _override(
                    "r",
                    [
                        {
                            "kind": "event_property_contains",
                            "key": "content.alt_aliases",
                            "value": value,
                        }
                    ],
                    ["notify", {"set_tweak": "highlight"}],
                ),
            )
        )
        outcome = evaluate(
            {
                "type": "m.room.canonical_alias",
                "sender": BOB,
                "state_key": "",
                "content": {"alt_aliases": array},
            },
            rules,
        )
        return outcome is not None and outcome.highlight

    assert contains("#a:x", ["#b:x", "#a:x"])
    assert not contains(":x", ["#a:x"])
    assert not contains("#a:x", "#a:x")  # not an array
    assert contains(1, [True, 1])
    assert not contains(1, [True, "1"])
    assert contains(False, [{"x": 1}, False])


def test_display_name_member_count_and_permission() -> None:
    def fires(conditions: list[dict[str, Any]], pdu: dict[str, Any], **kw: Any) -> bool:
        rules = UserRules(
            rules=(_override("r", conditions, ["notify", {"set_tweak": "highlight"}]),)
        )
        outcome = evaluate(pdu, rules, **kw)
        return outcome is not None and outcome.highlight

    name = [{"kind": "contains_display_name"}]
    assert fires(name, _msg("hey Alice Smith!"), display_name="alice smith")
    assert not fires(name, _msg("hey AliceSmith"), display_name="Alice")
    assert not fires(name, _msg("hey Alice"), display_name=None)
    assert not fires(name, _msg("hey"), display_name="")
    assert fires(name, _msg("ping [bot]"), display_name="[bot]")
    for spec, members, expected in [
        ("2", 2, True),
        ("==2", 3, False),
        ("<3", 2, True),
        (">1", 2, True),
        (">=3", 2, False),
        ("<=2", 2, True),
        (">2", 2, False),
        ("abc", 2, False),
    ]:
        assert (
            fires([{"kind": "room_member_count", "is": spec}], _msg(), members=members) is expected
        ), spec
    permission = [{"kind": "sender_notification_permission", "key": "room"}]
    assert fires(permission, _msg(), power=50)
    assert not fires(permission, _msg(), power=49)
    assert fires(permission, _msg(), power=float("inf"))  # room v12 creators
    assert fires(
        [{"kind": "sender_notification_permission", "key": "custom"}],
        _msg(),
        power=0,
        power_levels={"notifications": {"custom": 0}},
    )
    # spec: an unknown condition never matches, which disables its rule.
    assert not fires([{"kind": "org.example.unknown"}], _msg())


def test_rule_kinds_in_priority_order() -> None:
    room = StoredRule("room", "!r:test", 1, (), True, None, None)
    sender = StoredRule(
        "sender", BOB, 1, ("notify", {"set_tweak": "sound", "value": "s"}), True, None, None
    )
    assert _tweaks(evaluate(_msg(), UserRules(rules=(sender,)))) == {"sound": "s"}
    # The room rule (silent) comes before the sender rule.
    assert _tweaks(evaluate(_msg(), UserRules(rules=(room, sender)))) is None
    high = _override("a", [], ["notify", {"set_tweak": "sound", "value": "a"}], priority=2)
    low = _override("b", [], ["notify", {"set_tweak": "sound", "value": "b"}], priority=1)
    assert _tweaks(evaluate(_msg(), UserRules(rules=(low, high)))) == {"sound": "a"}
    disabled = StoredRule("override", "a", 2, ("notify",), False, (), None)
    assert _tweaks(evaluate(_msg(), UserRules(rules=(disabled, low)))) == {"sound": "b"}
    # Historical actions were stripped: a rule with only dont_notify matches and is silent.
    assert normalize_actions(["dont_notify", "coalesce"]) == ()


def test_validation() -> None:
    assert normalize_actions(
        [
            "notify",
            {"set_tweak": "highlight", "value": False},
            {"set_tweak": "custom", "value": [1]},
        ]
    ) == (
        "notify",
        {"set_tweak": "highlight", "value": False},
        {"set_tweak": "custom", "value": [1]},
    )
    for bad in [
        "notify",
        ["wiggle"],
        [3],
        [{"value": 1}],
        [{"set_tweak": "sound"}],
        [{"set_tweak": "highlight", "value": "yes"}],
    ]:
        with pytest.raises(MatrixError):
            normalize_actions(bad)
    assert normalize_conditions([{"kind": "org.example.new"}]) == ({"kind": "org.example.new"},)
    for bad_conditions in [
        {},
        [1],
        [{"kind": 1}],
        [{"kind": "event_match", "key": "type"}],
        [{"kind": "event_property_is", "key": "a"}],
        [{"kind": "event_property_is", "key": "a", "value": 1.5}],
        [{"kind": "event_property_contains", "key": "a", "value": [1]}],
        [{"kind": "room_member_count", "is": "~2"}],
    ]:
        with pytest.raises(MatrixError):
            normalize_conditions(bad_conditions)
    for kind, rule_id in [
        ("override", ".mine"),
        ("override", "a/b"),
        ("override", "a\\b"),
        ("override", ""),
    ]:
        with pytest.raises(MatrixError):
            check_new_rule_id(kind, rule_id)
    check_new_rule_id("room", "!r:test")
    # A room or sender rule whose ID is not a room or user ID is kept (it never matches), as
    # Synapse keeps it (SyTest checks it).
    check_new_rule_id("room", "room")
    check_new_rule_id("sender", "bob")
