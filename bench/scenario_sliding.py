"""Scenario 8, ``sliding_sync``: simplified sliding sync (MSC4186) for a user in many rooms.

A user in 1 000 rooms (``--scale`` times that, or ``--sliding-rooms N``) asks for the 20 most
recently active, as Element X's room list does (``_request``): the first response of a new
connection (x20, each its own ``conn_id``), then the incremental response after one new
message (x20). A server without simplified sliding sync gets an error for the scenario.

Hooked into ``bench/scenarios.py`` by: ``"sliding_sync"`` in ``SCENARIOS``,
``FIGURES.update(SLIDING_FIGURES)``, and ``Bench.sliding_sync`` returning
``await sliding_sync(self)``.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from bench.client import User
from bench.scenarios import Bench, Figure, Result
from bench.stats import percentile

PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
SLIDING_FIGURES = {
    "sliding_sync": {
        "first_p50_ms": Figure("first window p50", "ms"),
        "first_max_ms": Figure("first window max", "ms"),
        "first_kb": Figure("first window size", "KB"),
        "incr_p50_ms": Figure("incremental p50", "ms"),
        "incr_kb": Figure("incremental size", "KB"),
        "setup_s": Figure("room setup (not measured part)", "s"),
    }
}
WINDOW = 20
REPEATS = 20  # five samples made the p50 swing by 2x on a loaded machine


def _request(conn_id: str) -> dict[str, Any]:
    """Shaped as matrix-rust-sdk's room list service (Element X) asks for its first window:
    crates/matrix-sdk-ui/src/room_list_service/mod.rs at 8c234f0 (list ``all_rooms``,
    range 0..=19, timeline 1, avatar, encryption and power levels, no invites, no spaces;
    account data, e2ee and to-device extensions)."""
    return {
        "conn_id": conn_id,
        "lists": {
            "all_rooms": {
                "ranges": [[0, WINDOW - 1]],
                "timeline_limit": 1,
                "required_state": [
                    ["m.room.avatar", ""],
                    ["m.room.encryption", ""],
                    ["m.room.power_levels", ""],
                ],
                "filters": {"is_invite": False, "not_room_types": ["m.space"]},
            }
        },
        "extensions": {
            "account_data": {"enabled": True},
            "e2ee": {"enabled": True},
            "to_device": {"enabled": True},
        },
    }


async def _sliding(
    bench: Bench, user: User, body: dict[str, Any], pos: str | None
) -> tuple[dict[str, Any], int, float]:
    params = {"timeout": "0"}
    if pos is not None:
        params["pos"] = pos
    start = time.perf_counter()
    _, data, size = await bench.mx.call(
        "POST", PATH, token=user.access_token, body=body, params=params, timeout_s=300
    )
    return data, size, (time.perf_counter() - start) * 1000


async def sliding_sync(bench: Bench) -> list[Result]:
    room_count = bench.sliding_rooms or bench.n(1000, WINDOW + REPEATS)
    if room_count < WINDOW + REPEATS:
        raise ValueError(f"sliding_sync needs at least {WINDOW + REPEATS} rooms")
    result = Result(
        "sliding_sync",
        f"a user in {room_count} rooms asks for the {WINDOW} most active (timeline 1, "
        f"room-list state, e2ee and to-device): first response of a new connection "
        f"(x{REPEATS}), then the incremental one after one new message (x{REPEATS})",
    )
    user = await bench.mx.register(bench.localpart("sliding"), bench.password)
    setup_start = time.perf_counter()
    rooms = await bench.bounded(
        f"{room_count} rooms (setup)",
        [
            partial(bench.mx.create_room, user, preset="private_chat", name=f"bench {i}")
            for i in range(room_count)
        ],
    )
    setup_s = time.perf_counter() - setup_start
    first: list[float] = []
    first_sizes: list[float] = []
    incremental: list[float] = []
    incr_sizes: list[float] = []
    with bench.measure(result):
        pos = ""
        for i in range(REPEATS):
            data, size, ms = await _sliding(bench, user, _request(f"bench{i}"), None)
            first.append(ms)
            first_sizes.append(size)
            if len(data.get("rooms", {})) != WINDOW:
                result.errors += 1
            pos = data["pos"]
        body = _request(f"bench{REPEATS - 1}")
        for i in range(REPEATS):
            # A room from the bottom of the list: it moves to the top of the window.
            room = rooms[i]
            event_id = await bench.mx.send_text(user, room, f"new {i}")
            data, size, ms = await _sliding(bench, user, body, pos)
            incremental.append(ms)
            incr_sizes.append(size)
            timeline = data.get("rooms", {}).get(room, {}).get("timeline", [])
            if event_id not in [e.get("event_id") for e in timeline]:
                result.errors += 1
            pos = data["pos"]
    result.samples_ms = {"first": first, "incremental": incremental}
    result.figures = {
        "first_p50_ms": percentile(first, 50),
        "first_max_ms": max(first),
        "first_kb": (percentile(first_sizes, 50) or 0) / 1024,
        "incr_p50_ms": percentile(incremental, 50),
        "incr_kb": (percentile(incr_sizes, 50) or 0) / 1024,
        "setup_s": setup_s,
    }
    return [result]
