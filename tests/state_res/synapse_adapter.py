"""Resolve generated DAGs with Synapse's resolver; run with the Synapse virtualenv's python.

    python synapse_adapter.py < dags.jsonl > resolved.jsonl

Each input line is one DAG (see `generator.py`): the room version, every event by ID and the
state sets to resolve. Every event is handed to Synapse as an in-flight event (`event_map`), so
Synapse computes the auth difference and the v2.1 conflicted subgraph itself; the store only
answers for events it never needs. Each output line is the resolved state, or the error.
This file imports Synapse, never the homeserver: it runs in another interpreter.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any


def _run(coro: Any) -> Any:
    # Nothing in the resolver waits on I/O here: one send runs the coroutine to its end.
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the resolver suspended; the adapter has no reactor")


class _Clock:
    async def sleep(self, duration: Any) -> None:
        return None


class _Store:
    def __init__(self, events: dict[str, Any]) -> None:
        self._events = events

    async def get_events(self, event_ids: Any, allow_rejected: bool = False) -> dict[str, Any]:
        return {e: self._events[e] for e in event_ids if e in self._events}

    async def get_auth_chain_difference(
        self,
        room_id: str,
        state_sets: Any,
        conflicted_state: Any,
        additional_backwards_reachable_conflicted_events: Any,
    ) -> Any:
        from synapse.storage.databases.main.event_federation import StateDifference

        # Every event is in flight, so nothing is left for the store's part.
        return StateDifference(
            auth_difference=set(),
            conflicted_subgraph=set() if conflicted_state is not None else None,
        )


def resolve(dag: dict[str, Any]) -> dict[str, Any]:
    import synapse.event_auth  # noqa: F401  (first: synapse.state imports it back)
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
    from synapse.events import make_event_from_dict
    from synapse.state import v2

    version = KNOWN_ROOM_VERSIONS[dag["room_version"]]
    events = {}
    mismatched = []
    for event_id, pdu in dag["events"].items():
        event = make_event_from_dict(pdu, version)
        if event.event_id != event_id:
            mismatched.append([event_id, event.event_id])
        events[event.event_id] = event
    state_sets = [{(t, k): e for t, k, e in state} for state in dag["state_sets"]]
    room_id = next(e.room_id for e in events.values() if e.type != "m.room.create") or ""
    resolved = _run(
        v2.resolve_events_with_store(
            _Clock(), room_id, version, state_sets, dict(events), _Store(events)
        )
    )
    return {
        "resolved": sorted([t, k, e] for (t, k), e in dict(resolved).items()),
        "event_id_mismatch": mismatched,
    }


def main() -> None:
    import synapse

    print(json.dumps({"synapse_version": synapse.__version__.split()[0]}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        dag = json.loads(line)
        try:
            answer = resolve(dag)
        except Exception:
            answer = {"error": traceback.format_exc()}
        answer["index"] = dag.get("index")
        sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
