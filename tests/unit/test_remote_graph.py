"""FederatedGraph's requests and the checks of the answers, against a scripted origin (the
HTTP path is tested in tests/api/test_federation_gaps.py): paths and bodies as the spec has
them, every malformed answer a RemoteGraphError, events fetched a few at a time, unknown
ones left out, a failing server ending the fetch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from homeserver.federation.client import FederationError
from homeserver.federation.remote_graph import (
    EVENT_FETCH_CONCURRENCY,
    MAX_STATE_IDS,
    FederatedGraph,
)
from homeserver.rooms.incoming import RemoteGraphError

ROOM = "!r:remote.test"


class Scripted:
    """Answers each request with ``answer(method, path, kwargs)``; records them."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str, str, dict[str, Any]]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def request(self, destination: str, method: str, path: str, **kw: Any) -> Any:
        self.asked.append((destination, method, path, kw))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            result = self.answer(method, path, kw)
            if isinstance(result, Exception):
                raise result
            return result
        finally:
            self.in_flight -= 1


async def test_get_missing_events_asks_as_the_spec_says() -> None:
    events = [{"depth": 2}, {"depth": 3}]
    origin = Scripted(lambda *_: {"events": events})
    graph = FederatedGraph(origin, "remote.test")
    assert await graph.get_missing_events(ROOM, ["$a"], ["$z"], 10, 1) == events
    [(dest, method, path, kw)] = origin.asked
    assert (dest, method) == ("remote.test", "POST")
    assert path == "/_matrix/federation/v1/get_missing_events/%21r%3Aremote.test"
    assert kw["content"] == {
        "earliest_events": ["$a"],
        "latest_events": ["$z"],
        "limit": 10,
        "min_depth": 1,
    }


@pytest.mark.parametrize(
    "answer",
    [
        [],
        {"events": "x"},
        {"events": [{"depth": 1}, "not an event"]},
        {"events": [{"depth": i} for i in range(11)]},  # more than asked for
        FederationError("remote.test", "answered 500", status=500),
    ],
)
async def test_bad_missing_events_answers_are_errors(answer: Any) -> None:
    graph = FederatedGraph(Scripted(lambda *_: answer), "remote.test")
    with pytest.raises(RemoteGraphError):
        await graph.get_missing_events(ROOM, ["$a"], ["$z"], 10, 0)


async def test_state_ids() -> None:
    origin = Scripted(lambda *_: {"pdu_ids": ["$s"], "auth_chain_ids": ["$c", "$d"]})
    graph = FederatedGraph(origin, "remote.test")
    state = await graph.get_state_ids(ROOM, "$e")
    assert list(state.state_ids) == ["$s"] and list(state.auth_chain_ids) == ["$c", "$d"]
    [(_, method, path, kw)] = origin.asked
    assert method == "GET" and path.endswith("/state_ids/%21r%3Aremote.test")
    assert kw["query"] == {"event_id": "$e"}


@pytest.mark.parametrize(
    "answer",
    [
        None,
        {"pdu_ids": ["$s"]},
        {"pdu_ids": "$s", "auth_chain_ids": []},
        {"pdu_ids": [1], "auth_chain_ids": []},
        {"pdu_ids": [""], "auth_chain_ids": []},
        {"pdu_ids": ["$" + "x" * 300], "auth_chain_ids": []},
        {"pdu_ids": ["$s"] * (MAX_STATE_IDS + 1), "auth_chain_ids": []},
        FederationError("remote.test", "timed out"),
    ],
)
async def test_bad_state_ids_answers_are_errors(answer: Any) -> None:
    graph = FederatedGraph(Scripted(lambda *_: answer), "remote.test")
    with pytest.raises(RemoteGraphError):
        await graph.get_state_ids(ROOM, "$e")


async def test_events_are_fetched_a_few_at_a_time_and_unknown_ones_left_out() -> None:
    def answer(method: str, path: str, kw: dict[str, Any]) -> Any:
        event_id = path.rsplit("/", 1)[1]
        n = int(event_id.removeprefix("%24e"))
        if n % 5 == 0:
            return FederationError("remote.test", "answered 404", status=404)
        if n % 7 == 0:
            return {"pdus": "bad"}  # a bad answer: that event is not to be had
        return {"origin": "remote.test", "origin_server_ts": 0, "pdus": [{"n": n}]}

    origin = Scripted(answer)
    graph = FederatedGraph(origin, "remote.test")
    found = await graph.get_events(ROOM, [f"$e{i}" for i in range(1, 41)] + ["$e1"])
    assert sorted(p["n"] for p in found) == [i for i in range(1, 41) if i % 5 != 0 and i % 7 != 0]
    assert len(origin.asked) == 40  # each once
    assert 1 < origin.most_in_flight <= EVENT_FETCH_CONCURRENCY


async def test_a_failing_server_ends_the_event_fetch() -> None:
    def answer(method: str, path: str, kw: dict[str, Any]) -> Any:
        return FederationError("remote.test", "answered 502", status=502)

    origin = Scripted(answer)
    graph = FederatedGraph(origin, "remote.test")
    with pytest.raises(RemoteGraphError):
        await graph.get_events(ROOM, [f"$e{i}" for i in range(100)])
    assert len(origin.asked) <= EVENT_FETCH_CONCURRENCY
    assert await graph.get_events(ROOM, []) == []


async def test_the_requests_share_a_time_budget() -> None:
    async def slow(destination: str, method: str, path: str, **kw: Any) -> Any:
        await asyncio.sleep(0.05)
        return {"origin": "remote.test", "origin_server_ts": 0, "pdus": [{"p": path}]}

    origin = Scripted(None)
    origin.request = slow  # type: ignore[method-assign]
    graph = FederatedGraph(origin, "remote.test", budget_s=0.12)
    assert len(await graph.get_events(ROOM, ["$a"])) == 1
    with pytest.raises(RemoteGraphError, match="out of time"):
        await graph.get_events(ROOM, [f"$e{i}" for i in range(100)])
    with pytest.raises(RemoteGraphError, match="out of time"):
        await graph.get_state_ids(ROOM, "$e")
