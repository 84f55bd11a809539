"""How long state resolution's graph reads take on a room with a deep history: the auth
difference of two forks (``EventStore.get_auth_chain_difference``) and an auth chain
(``get_auth_chain``), on SQLite and PostgreSQL, through the store's own queries.

    .venv/bin/python -m bench.auth_chain                       # SQLite, 5 000 state events
    .venv/bin/python -m bench.auth_chain --db postgresql --events 20000 --forks 2
    .venv/bin/python -m bench.auth_chain --no-index        # the recursive query, for comparison

The room is written straight into ``events``, ``event_auth`` and the chain cover index
(``homeserver/storage/events/chains.py``, its in-memory builder; ``--no-index`` leaves the
index empty, so the auth difference takes the recursive query over ``event_auth``; the auth
chain always does): a create event, a creator, power levels and join rules, then state
events in a common history and in each fork: new members joining, members changing their
profile (each membership cites the user's previous one), and every ``--pl-every``-th event a
power-level change (citing the previous one): the auth chains are as deep as the room's
history of power levels and memberships. The state of each fork is its latest event per key.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import asyncpg
import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.events.chains import ChainBuilder
from homeserver.storage.migrate import upgrade_head
from homeserver.storage.schema import (
    event_auth,
    event_auth_chain_links,
    event_auth_chains,
    events,
)

PG_ADMIN_URL = os.environ.get("HS_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Branch:
    """A line of history: its state (key -> event) and the auth rows it wrote."""

    state: dict[str, str]
    rows: list[dict[str, str]] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # event -> its state key here


def grow(branch: Branch, name: str, count: int, pl_every: int, rng: random.Random) -> None:
    """``count`` state events on ``branch``: power-level changes, joins, profile changes."""
    for i in range(count):
        event_id = f"${name}{i}"
        s = branch.state
        if i % pl_every == 0:
            auths = [s["create"], s["pl"], s["member:creator"]]
            key = "pl"
        elif not branch.users or rng.random() < 0.6:
            user = f"{name}u{i}"
            branch.users.append(user)
            auths = [s["create"], s["pl"], s["join_rules"]]
            key = f"member:{user}"
        else:
            user = rng.choice(branch.users)
            key = f"member:{user}"
            auths = [s["create"], s["pl"], s["join_rules"], s[key]]
        branch.rows.extend({"event_id": event_id, "auth_id": a} for a in auths)
        s[key] = event_id
        branch.keys[event_id] = key


def build(
    events: int, forks: int, fork_share: float, pl_every: int
) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, str]]:
    """(auth rows, the state of each fork, each event's key: "create", "pl", "join_rules",
    "member:<user>")."""
    rng = random.Random(17)
    root = Branch({"create": "$create"})
    root.rows += [
        {"event_id": "$creator", "auth_id": "$create"},
        {"event_id": "$pl0", "auth_id": "$create"},
        {"event_id": "$pl0", "auth_id": "$creator"},
        {"event_id": "$jr", "auth_id": "$create"},
        {"event_id": "$jr", "auth_id": "$pl0"},
        {"event_id": "$jr", "auth_id": "$creator"},
    ]
    root.state.update({"member:creator": "$creator", "pl": "$pl0", "join_rules": "$jr"})
    root.keys.update(
        {"$create": "create", "$creator": "member:creator", "$pl0": "pl", "$jr": "join_rules"}
    )
    per_fork = int(events * fork_share / forks)
    grow(root, "c", events - per_fork * forks, pl_every, rng)
    rows = list(root.rows)
    keys = dict(root.keys)
    states = []
    for f in range(forks):
        branch = Branch(dict(root.state), users=list(root.users))
        grow(branch, f"f{f}_", per_fork, pl_every, rng)
        rows += branch.rows
        keys.update(branch.keys)
        states.append(branch.state)
    return rows, states, keys


_TYPES = {"create": "m.room.create", "pl": "m.room.power_levels", "join_rules": "m.room.join_rules"}


def event_rows(keys: dict[str, str]) -> list[dict[str, object]]:
    """The events' rows (what the index's write path reads: type and state key)."""
    found: list[dict[str, object]] = []
    for n, (event_id, key) in enumerate(keys.items(), start=1):
        event_type, state_key = (
            ("m.room.member", key.split(":", 1)[1])
            if key.startswith("member:")
            else (_TYPES[key], "")
        )
        found.append(
            {
                "stream_ordering": n,
                "event_id": event_id,
                "room_id": "!bench:test",
                "type": event_type,
                "state_key": state_key,
                "sender": "@bench:test",
                "depth": n,
                "origin_server_ts": 0,
                "json": "{}",
                "state_group": 0,
            }
        )
    return found


def index_rows(
    rows: list[dict[str, str]], events_: list[dict[str, object]]
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    auths: dict[str, list[str]] = {}
    for r in rows:
        auths.setdefault(r["event_id"], []).append(r["auth_id"])
    builder = ChainBuilder()
    for e in events_:
        event_id = str(e["event_id"])
        builder.add(event_id, str(e["type"]), str(e["state_key"]), auths.get(event_id, []))
    places, links, left = builder.rows()
    assert not left
    return places, links


async def timed(runs: int, call) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def measure(url: str, args: argparse.Namespace) -> None:
    db = Database(url)
    try:
        await upgrade_head(db.engine)
        rows, states, keys = build(args.events, args.forks, args.fork_share, args.pl_every)
        tables: list[tuple[sa.Table, list[dict[str, object]]]] = [
            (event_auth, list(rows)),
            (events, event_rows(keys)),
        ]
        if args.index:
            start = time.perf_counter()
            places, links = index_rows(rows, tables[1][1])
            built_ms = (time.perf_counter() - start) * 1000
            print(f"index built in memory in {built_ms:.0f} ms: {len(links)} links")
            tables += [(event_auth_chains, places), (event_auth_chain_links, links)]
        async with db.write() as conn:
            for table, values in tables:
                for i in range(0, len(values), 2000):
                    await conn.execute(table.insert(), values[i : i + 2000])
        async with db.write() as conn:  # statistics, as a live database has them
            await conn.execute(sa.text("ANALYZE"))
        store = EventStore(db)
        sets = [list(s.values()) for s in states]
        difference = await store.get_auth_chain_difference(sets)
        chain = await store.get_auth_chain(sets[0])
        diff_ms = await timed(args.runs, lambda: store.get_auth_chain_difference(sets))
        chain_ms = await timed(args.runs, lambda: store.get_auth_chain(sets[0]))
        print(
            f"{url.split(':', 1)[0]}: {args.events} state events, {args.forks} forks "
            f"({len(rows)} auth edges, states of {len(sets[0])} entries, chain {len(chain)}, "
            f"difference {len(difference)}, {'index' if args.index else 'recursive query'})"
        )
        for name, samples in (("auth difference", diff_ms), ("auth chain of one state", chain_ms)):
            print(
                f"  {name}: median {statistics.median(samples):.1f} ms, "
                f"min {min(samples):.1f}, max {max(samples):.1f} ({len(samples)} runs)"
            )
    finally:
        await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--forks", type=int, default=2)
    parser.add_argument("--fork-share", type=float, default=0.2, help="of the events, in forks")
    parser.add_argument("--pl-every", type=int, default=50)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--index", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if args.db == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            await measure(f"sqlite+aiosqlite:///{tmp}/bench.db", args)
        return
    name = f"hs_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        await measure(f"{base}/{name}", args)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
