"""FederatedGraph.backfill against a scripted origin (the HTTP path and the pipeline are
tested in tests/api/test_backfill.py): the request as the spec has it, and every answer of
the wrong shape a RemoteGraphError."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.federation.client import FederationError
from homeserver.federation.remote_graph import MAX_BACKFILL_LIMIT, FederatedGraph
from homeserver.rooms.incoming import RemoteGraphError
from tests.unit.test_remote_graph import ROOM, Scripted


async def test_backfill_asks_as_the_spec_says() -> None:
    pdus = [{"depth": 3}, {"depth": 2}]
    origin = Scripted(lambda *_: {"origin": "remote.test", "origin_server_ts": 1, "pdus": pdus})
    graph = FederatedGraph(origin, "remote.test")
    assert await graph.backfill(ROOM, ["$a", "$b", "$a"], 10) == pdus
    [(dest, method, path, kw)] = origin.asked
    assert (dest, method) == ("remote.test", "GET")
    assert path == "/_matrix/federation/v1/backfill/%21r%3Aremote.test"
    assert kw["query"] == {"v": ["$a", "$b"], "limit": "10"}


async def test_backfill_limit_is_bounded() -> None:
    origin = Scripted(lambda *_: {"pdus": []})
    graph = FederatedGraph(origin, "remote.test")
    await graph.backfill(ROOM, ["$a"], 10_000)
    await graph.backfill(ROOM, ["$a"], 0)
    assert [kw["query"]["limit"] for *_, kw in origin.asked] == [str(MAX_BACKFILL_LIMIT), "1"]


@pytest.mark.parametrize(
    "answer",
    [
        [],
        "pdus",
        {},
        {"pdus": {"$a": {}}},
        {"pdus": [{"depth": 1}, 3]},
        {"pdus": [{}, {}, {}]},  # more than the 2 asked for
        FederationError("remote.test", "answered 500", status=500),
    ],
)
async def test_a_malformed_backfill_answer_is_an_error(answer: Any) -> None:
    graph = FederatedGraph(Scripted(lambda *_: answer), "remote.test")
    with pytest.raises(RemoteGraphError):
        await graph.backfill(ROOM, ["$a"], 2)


async def test_backfill_needs_an_event_to_start_from() -> None:
    origin = Scripted(lambda *_: {"pdus": []})
    graph = FederatedGraph(origin, "remote.test")
    with pytest.raises(RemoteGraphError):
        await graph.backfill(ROOM, ["", "x" * 300], 10)
    assert origin.asked == []
