"""Migration 0007 (room_dag) turns the rooms of a database made at the revision before it
(rooms as lines) into graphs without losing anything: extremities, prev_events edges and
auth_events edges."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, NewEvent
from homeserver.storage.migrate import alembic_config, upgrade_head
from homeserver.storage.schema import event_auth, event_edges, event_forward_extremities
from tests.conftest import PG_ADMIN_URL

ALICE = "@alice:test"


@pytest.fixture(params=["sqlite", "postgresql"])
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of its own (the shared ones are migrated to head already)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    name = f"hs_test_migrate_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def before_room_dag(url: str) -> str:
    """The revision the room-graph migration follows (whatever number it gets at a merge)."""
    script = ScriptDirectory.from_config(alembic_config(url))
    [dag] = [r for r in script.walk_revisions() if r.path.endswith("_room_dag.py")]
    assert isinstance(dag.down_revision, str)
    return dag.down_revision


async def upgrade_to(db: Database, revision: str) -> None:
    cfg = alembic_config(str(db.engine.url.render_as_string(hide_password=False)))

    def run(connection: object) -> None:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(run)


def pdu(room_id: str, event_type: str, depth: int, prevs: list[object], auths: list[object]) -> str:
    event: dict[str, object] = {
        "room_id": room_id,
        "type": event_type,
        "sender": ALICE,
        "content": {},
        "depth": depth,
        "origin_server_ts": 1_700_000_000_000 + depth,
        "prev_events": prevs,
        "auth_events": auths,
    }
    if event_type != "m.room.message":
        event["state_key"] = ""
    return json.dumps(event)


# Two rooms as the revision before stored them: a v11 room (event IDs in prev_events and
# auth_events) and a v1 room ([event ID, hashes] pairs); each a line whose last event is
# rooms.latest_event_id.
ROOMS = {
    "!new:test": (
        "11",
        [
            ("$create", "m.room.create", [], []),
            ("$pl", "m.room.power_levels", ["$create"], ["$create"]),
            ("$m1", "m.room.message", ["$pl"], ["$create", "$pl"]),
            ("$m2", "m.room.message", ["$m1"], ["$create", "$pl"]),
        ],
    ),
    "!old:test": (
        "1",
        [
            ("$v1create:test", "m.room.create", [], []),
            (
                "$v1msg:test",
                "m.room.message",
                [["$v1create:test", {"sha256": "x"}]],
                [["$v1create:test", {"sha256": "x"}]],
            ),
        ],
    ),
}


async def test_upgrade_to_the_room_graph_keeps_every_room_and_event(fresh_url: str) -> None:
    db = Database(fresh_url)
    try:
        await upgrade_to(db, before_room_dag(fresh_url))
        position = 0
        async with db.engine.begin() as conn:
            for room_id, (version, chain) in ROOMS.items():
                await conn.execute(
                    sa.text(
                        "INSERT INTO state_groups (id, room_id, prev_group, is_snapshot,"
                        " chain_length) VALUES (:id, :room_id, NULL, true, 0)"
                    ),
                    {"id": position + 1, "room_id": room_id},
                )
                for depth, (event_id, event_type, prevs, auths) in enumerate(chain, 1):
                    position += 1
                    await conn.execute(
                        sa.text(
                            "INSERT INTO events (stream_ordering, event_id, room_id, type,"
                            " state_key, sender, depth, origin_server_ts, json, state_group)"
                            " VALUES (:so, :id, :room, :type, :sk, :sender, :depth, :ts,"
                            " :json, :group)"
                        ),
                        {
                            "so": position,
                            "id": event_id,
                            "room": room_id,
                            "type": event_type,
                            "sk": None if event_type == "m.room.message" else "",
                            "sender": ALICE,
                            "depth": depth,
                            "ts": 1_700_000_000_000 + depth,
                            "json": pdu(room_id, event_type, depth, prevs, auths),
                            "group": position - depth + 1,
                        },
                    )
                await conn.execute(
                    sa.text(
                        "INSERT INTO rooms (room_id, room_version, creator, created_ts,"
                        " is_public, latest_event_id, current_depth, current_state_group)"
                        " VALUES (:room, :version, :creator, 0, false, :latest, :depth, :group)"
                    ),
                    {
                        "room": room_id,
                        "version": version,
                        "creator": ALICE,
                        "latest": chain[-1][0],
                        "depth": len(chain),
                        "group": position - len(chain) + 1,
                    },
                )
            await conn.execute(
                sa.text("UPDATE stream_positions SET position = :p WHERE stream = 'events'"),
                {"p": position},
            )
        # A room created but never given an event has no extremity.
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO rooms (room_id, room_version, creator, created_ts, is_public,"
                    " current_depth) VALUES ('!empty:test', '11', :c, 0, false, 0)"
                ),
                {"c": ALICE},
            )

        await upgrade_head(db.engine)

        async with db.engine.connect() as conn:
            extremities = set(
                tuple(r) for r in (await conn.execute(sa.select(event_forward_extremities))).all()
            )
            edges = {tuple(r) for r in (await conn.execute(sa.select(event_edges))).all()}
            auth = {tuple(r) for r in (await conn.execute(sa.select(event_auth))).all()}
        assert extremities == {("!new:test", "$m2"), ("!old:test", "$v1msg:test")}
        assert edges == {
            ("$pl", "$create"),
            ("$m1", "$pl"),
            ("$m2", "$m1"),
            ("$v1msg:test", "$v1create:test"),
        }
        assert auth == {
            ("$pl", "$create"),
            ("$m1", "$create"),
            ("$m1", "$pl"),
            ("$m2", "$create"),
            ("$m2", "$pl"),
            ("$v1msg:test", "$v1create:test"),
        }

        # The migrated room goes on as a graph: a new event replaces the extremity.
        store = EventStore(db)
        assert await store.get_auth_chain(["$m2"]) == {"$create", "$pl"}
        new = NewEvent(
            json.loads(pdu("!new:test", "m.room.message", 5, ["$m2"], ["$create", "$pl"])),
            "$m3",
            "!new:test",
            {},
        )
        assert await store.persist_event(new, "$m2") is not None
        assert [e.event_id for e in await store.get_forward_extremities("!new:test")] == ["$m3"]
        assert await store.get_prev_event_ids("$m3") == ["$m2"]
    finally:
        await db.close()
