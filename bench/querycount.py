"""Database statements per send and per sync wake-up on our server (``--count-queries``)."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

from bench.client import Matrix
from bench.progress import log

ROUNDS = 10


class QueryLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, offset: int) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()


async def count_queries(
    mx: Matrix, qlog: QueryLog, run_id: str, name: str = "ours"
) -> dict[str, Any]:
    """Statements per send with nobody listening, per long-poll wake-up, per idle long-poll."""
    password = f"bench-password-{run_id}"
    alice = await mx.register(f"b{run_id}_qa", password)
    bob = await mx.register(f"b{run_id}_qb", password)
    room_id = await mx.create_room(alice, preset="trusted_private_chat", invite=[bob.user_id])
    await mx.join(bob, room_id)
    for i in range(3):  # warm caches (token cache, room state)
        await mx.send_text(alice, room_id, f"warm {i}")
    body, _ = await mx.sync(bob)
    since = body["next_batch"]
    await asyncio.sleep(0.5)

    send_counts, send_example = [], []
    for i in range(ROUNDS):
        offset = qlog.mark()
        await mx.send_text(alice, room_id, f"count {i}")
        await asyncio.sleep(0.2)
        lines = qlog.since(offset)
        send_counts.append(lines)
        send_example = lines
    body, _ = await mx.sync(bob, since=since)
    since = body["next_batch"]

    enter_counts, wake_counts, wake_example = [], [], []
    for i in range(ROUNDS):
        offset = qlog.mark()
        poll = asyncio.create_task(mx.sync(bob, since=since, timeout_ms=30_000))
        await asyncio.sleep(0.3)
        enter_counts.append(qlog.since(offset))
        offset = qlog.mark()
        await mx.send_text(alice, room_id, f"wake {i}")
        body, _ = await poll
        since = body["next_batch"]
        await asyncio.sleep(0.2)
        # Both the send and the woken sync: the wake-up is what exceeds a lone send.
        lines = qlog.since(offset)
        wake_counts.append(lines)
        wake_example = lines

    def avg(samples: list[list[str]], commits: bool = False) -> float:
        """Mean SQL statements (BEGIN and COMMIT not counted) or transactions (commits)."""
        return sum(
            sum(
                1
                for s in lines
                if (s == "COMMIT" if commits else not s.startswith(("BEGIN", "COMMIT")))
            )
            for lines in samples
        ) / len(samples)

    send_q, both_q = avg(send_counts), avg(wake_counts)
    result = {
        "statements_per_send": send_q,
        "commits_per_send": avg(send_counts, True),
        "statements_per_long_poll_entry": avg(enter_counts),
        "statements_per_send_plus_wakeup": both_q,
        "statements_per_wakeup": both_q - send_q,
        "transactions_per_wakeup": avg(wake_counts, True) - avg(send_counts, True),
        "transactions_per_long_poll_entry": avg(enter_counts, True),
        "send_statements_example": send_example,
        "send_plus_wakeup_statements_example": wake_example,
    }
    log(
        f"{name}: {send_q:.1f} SQL statements per send, {both_q - send_q:.1f} per sync "
        f"wake-up, {avg(enter_counts):.1f} on entering an idle long-poll"
    )
    return result


def describe(result: dict[str, Any]) -> str:
    lines = [
        f"SQL statements (BEGIN/COMMIT not counted) and transactions, mean of {ROUNDS} rounds:",
        f"  per send (nobody listening): {result['statements_per_send']:.1f} statements in "
        f"{result['commits_per_send']:.1f} transactions",
        f"  per sync wake-up (send+wake-up minus send): {result['statements_per_wakeup']:.1f} "
        f"statements in {result['transactions_per_wakeup']:.1f} transactions",
        f"  on entering an idle long-poll: {result['statements_per_long_poll_entry']:.1f} "
        f"statements in {result['transactions_per_long_poll_entry']:.1f} transactions",
        "",
        "one send:",
    ]
    lines += [f"  {s}" for s in result["send_statements_example"]]
    lines += ["", "one send plus the receiver's wake-up:"]
    lines += [f"  {s}" for s in result["send_plus_wakeup_statements_example"]]
    kinds = collections.Counter(
        s.split(" ")[0] for s in result["send_plus_wakeup_statements_example"]
    )
    lines += ["", "by kind: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common())]
    return "\n".join(lines) + "\n"
