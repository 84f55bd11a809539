"""Push rule evaluation for one event in a 1 000-member room: evaluations per second.

    python -m bench.push_rules [--members 1000] [--events 200] [--custom 0.1]

Measures what the send path adds per event (homeserver.push.actions.PushActionGenerator):
every member's compiled rules evaluated (most members with the default rules, a share with
rules of their own: a keyword, a display-name rule, a muted room), then the notifying rows
written with the event (SQLite, one transaction, as persist_event does). Rules and members
come from memory, as they do from the generator's caches once warm.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from homeserver.push.evaluator import CompiledRuleset, EventContext
from homeserver.push.rules import build_ruleset
from homeserver.storage.database import Database
from homeserver.storage.migrate import upgrade_head
from homeserver.storage.push import PushAction, record_push_actions
from homeserver.storage.push_rules import StoredRule, UserRules
from homeserver.storage.schema import event_push_actions

ROOM = "!bench:bench"


def _members(n: int, custom_share: float) -> list[tuple[str, str, CompiledRuleset]]:
    default = CompiledRuleset(build_ruleset(UserRules(), None))
    every = int(1 / custom_share) if custom_share > 0 else 0
    out = []
    for i in range(n):
        user_id = f"@user{i}:bench"
        ruleset = default
        if every and i % every == 0:
            ruleset = CompiledRuleset(
                build_ruleset(
                    UserRules(
                        rules=(
                            StoredRule(
                                "content",
                                "kw",
                                3,
                                ("notify", {"set_tweak": "highlight"}),
                                True,
                                None,
                                f"word{i}",
                            ),
                            StoredRule(
                                "override",
                                "dn",
                                2,
                                ("notify", {"set_tweak": "highlight"}),
                                True,
                                ({"kind": "contains_display_name"},),
                                None,
                            ),
                            StoredRule("room", "!muted:bench", 1, (), True, None, None),
                        )
                    ),
                    None,
                )
            )
        out.append((user_id, f"User {i}", ruleset))
    return out


def _events() -> list[tuple[str, dict[str, Any]]]:
    sender = "@sender:bench"
    return [
        (
            "plain message",
            {
                "type": "m.room.message",
                "sender": sender,
                "room_id": ROOM,
                "content": {"msgtype": "m.text", "body": "Hello everyone, lunch?"},
            },
        ),
        (
            "mention of 3",
            {
                "type": "m.room.message",
                "sender": sender,
                "room_id": ROOM,
                "content": {
                    "msgtype": "m.text",
                    "body": "ping",
                    "m.mentions": {"user_ids": ["@user1:bench", "@user2:bench", "@user3:bench"]},
                },
            },
        ),
        (
            "encrypted",
            {
                "type": "m.room.encrypted",
                "sender": sender,
                "room_id": ROOM,
                "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"},
            },
        ),
        (
            "reaction",
            {
                "type": "m.reaction",
                "sender": sender,
                "room_id": ROOM,
                "content": {
                    "m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "+1"}
                },
            },
        ),
    ]


def evaluate_all(
    members: list[tuple[str, str, CompiledRuleset]], pdu: dict[str, Any], n: int
) -> list[PushAction]:
    ctx = EventContext(
        pdu, f"$event{n}", member_count=len(members), sender_power=0, power_levels=None
    )
    groups: dict[int, tuple[CompiledRuleset, list[tuple[str, str | None]]]] = {}
    for user_id, display_name, ruleset in members:  # as PushActionGenerator groups them
        groups.setdefault(id(ruleset), (ruleset, []))[1].append((user_id, display_name))
    return [
        PushAction(user_id, "main", outcome.actions_json, outcome.highlight)
        for ruleset, group in groups.values()
        for user_id, outcome in ruleset.evaluate_many(ctx, group)
        if outcome.notify
    ]


async def _insert_timing(rows: list[PushAction], repeats: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
        await upgrade_head(db.engine)
        samples = []
        for i in range(repeats):
            start = time.perf_counter()
            async with db.write() as conn:
                await record_push_actions(conn, rows, ROOM, f"$e{i}", i + 1, 0)
            samples.append(time.perf_counter() - start)
        async with db.read() as conn:
            count = (
                await conn.execute(sa.select(sa.func.count()).select_from(event_push_actions))
            ).scalar_one()
        assert count == len(rows) * repeats
        await db.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200, help="events per kind")
    parser.add_argument(
        "--custom", type=float, default=0.1, help="share of members with rules of their own"
    )
    args = parser.parse_args()
    members = _members(args.members, args.custom)
    print(
        f"{args.members} members, {args.custom:.0%} with rules of their own; "
        f"{args.events} events of each kind"
    )
    print(f"{'event':<16} {'ms/event':>9} {'evaluations/s':>14} {'notified':>9}")
    notified: list[PushAction] = []
    for name, pdu in _events():
        evaluate_all(members, pdu, -1)  # warm the glob and condition caches
        samples = []
        for n in range(args.events):
            start = time.perf_counter()
            result = evaluate_all(members, pdu, n)
            samples.append(time.perf_counter() - start)
        median = statistics.median(samples)
        print(f"{name:<16} {median * 1000:>9.2f} {args.members / median:>14,.0f} {len(result):>9}")
        if name == "plain message":
            notified = result
    inserts = asyncio.run(_insert_timing(notified, 50))
    print(
        f"writing {len(notified)} push action rows (SQLite, one transaction): "
        f"{statistics.median(inserts) * 1000:.2f} ms median"
    )


if __name__ == "__main__":
    main()
