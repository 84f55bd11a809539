"""The push rules API, m.push_rules in sync, and rules deciding the counts."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import assert_errors, auth_header, register
from tests.openapi_schema import assert_response_matches

CS = "/_matrix/client/v3"
RULES = f"{CS}/pushrules/global"


async def _get(client: httpx.AsyncClient, token: str, path: str) -> Any:
    r = await client.get(path, headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    return r.json()


async def _put(client: httpx.AsyncClient, token: str, path: str, body: Any, **params: str) -> None:
    r = await client.put(path, json=body, params=params, headers=auth_header(token))
    assert r.status_code == 200, r.text


async def _sync(client: httpx.AsyncClient, token: str, since: str | None = None) -> dict[str, Any]:
    params = {"set_presence": "offline", **({"since": since} if since else {})}
    r = await client.get(f"{CS}/sync", params=params, headers=auth_header(token))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _push_rules_event(body: dict[str, Any]) -> dict[str, Any] | None:
    for e in body.get("account_data", {}).get("events", []):
        if e["type"] == "m.push_rules":
            content: dict[str, Any] = e["content"]
            return content
    return None


async def test_defaults_and_account_data(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    everything = await _get(client, token, f"{CS}/pushrules/")
    assert set(everything) == {"global"}
    assert everything["global"] == await _get(client, token, f"{RULES}/")
    assert everything["global"]["override"][0]["rule_id"] == ".m.rule.master"
    assert everything["global"]["underride"][-1]["rule_id"] == ".m.rule.encrypted"
    rule = await _get(client, token, f"{RULES}/override/.m.rule.is_user_mention")
    assert rule["conditions"][0]["value"] == "@alice:test"
    # Every initial sync carries m.push_rules; a change comes in the next incremental one.
    initial = await _sync(client, token)
    assert _push_rules_event(initial) == {"global": everything["global"]}
    await _put(client, token, f"{RULES}/override/.m.rule.master/enabled", {"enabled": True})
    changed = _push_rules_event(await _sync(client, token, initial["next_batch"]))
    assert changed is not None and changed["global"]["override"][0]["enabled"] is True


async def test_user_rules_order_update_delete(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    for name in ("a", "b"):
        await _put(
            client,
            token,
            f"{RULES}/content/{name}",
            {"pattern": f"word{name}", "actions": ["notify"]},
        )
    # A new rule goes first; before/after place it; an update keeps its place.
    await _put(client, token, f"{RULES}/content/c", {"pattern": "c", "actions": []}, after="a")
    await _put(
        client, token, f"{RULES}/content/d", {"pattern": "d", "actions": []}, before="b", after="a"
    )  # both given: before wins
    order = [r["rule_id"] for r in (await _get(client, token, f"{RULES}/"))["content"]]
    assert order == ["d", "b", "a", "c"]
    await _put(client, token, f"{RULES}/content/a", {"pattern": "new", "actions": ["notify"]})
    order = [r["rule_id"] for r in (await _get(client, token, f"{RULES}/"))["content"]]
    assert order == ["d", "b", "a", "c"]
    rule = await _get(client, token, f"{RULES}/content/a")
    assert rule == {
        "rule_id": "a",
        "default": False,
        "enabled": True,
        "actions": ["notify"],
        "pattern": "new",
    }
    # User override rules come after .m.rule.master and before the other defaults.
    await _put(
        client,
        token,
        f"{RULES}/override/mine",
        {
            "conditions": [{"kind": "event_match", "key": "type", "pattern": "x"}],
            "actions": ["dont_notify"],
        },
    )
    overrides = [r["rule_id"] for r in (await _get(client, token, f"{RULES}/"))["override"]]
    assert overrides[:3] == [".m.rule.master", "mine", ".m.rule.suppress_notices"]
    assert (await _get(client, token, f"{RULES}/override/mine"))["actions"] == []
    await _put(client, token, f"{RULES}/room/!room:test", {"actions": []})
    await _put(client, token, f"{RULES}/sender/@spam:test", {"actions": []})
    r = await client.delete(f"{RULES}/content/a", headers=auth_header(token))
    assert r.status_code == 200
    order = [r["rule_id"] for r in (await _get(client, token, f"{RULES}/"))["content"]]
    assert order == ["d", "b", "c"]


async def test_enabled_and_actions(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    await _put(client, token, f"{RULES}/underride/u", {"actions": ["notify"]})
    for rule in ("underride/u", "underride/.m.rule.message"):
        assert await _get(client, token, f"{RULES}/{rule}/enabled") == {"enabled": True}
        await _put(client, token, f"{RULES}/{rule}/enabled", {"enabled": False})
        assert await _get(client, token, f"{RULES}/{rule}/enabled") == {"enabled": False}
        actions = ["notify", {"set_tweak": "sound", "value": "bing"}]
        await _put(client, token, f"{RULES}/{rule}/actions", {"actions": actions})
        assert await _get(client, token, f"{RULES}/{rule}/actions") == {"actions": actions}
    message = await _get(client, token, f"{RULES}/underride/.m.rule.message")
    assert message["default"] is True and message["enabled"] is False


async def test_bad_requests(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    h = auth_header(token)
    await _put(client, token, f"{RULES}/content/x", {"pattern": "x", "actions": []})
    await assert_errors(
        client,
        "PUT",
        f"{RULES}/content/y",
        [
            ({"pattern": "y"}, 400, "M_MISSING_PARAM"),
            ({"actions": []}, 400, "M_MISSING_PARAM"),  # content rules need a pattern
            ({"pattern": 3, "actions": []}, 400, "M_BAD_JSON"),
            ({"pattern": "y", "actions": "notify"}, 400, "M_BAD_JSON"),
            ({"pattern": "y", "actions": ["wiggle"]}, 400, "M_BAD_JSON"),
            ({"pattern": "y", "actions": [{"set_tweak": "sound"}]}, 400, "M_BAD_JSON"),
            (b"{not json", 400, "M_NOT_JSON"),
            ([], 400, "M_BAD_JSON"),
        ],
        headers=h,
    )
    await assert_errors(
        client,
        "PUT",
        f"{RULES}/override/y",
        [
            ({"actions": [], "conditions": {}}, 400, "M_BAD_JSON"),
            (
                {"actions": [], "conditions": [{"kind": "event_match", "key": "type"}]},
                400,
                "M_BAD_JSON",
            ),
            (
                {"actions": [], "conditions": [{"kind": "room_member_count", "is": "x"}]},
                400,
                "M_BAD_JSON",
            ),
        ],
        headers=h,
    )
    cases = [
        ("PUT", f"{RULES}/bogus/y", {"actions": []}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{CS}/pushrules/device/override/y", {"actions": []}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{RULES}/override/.mine", {"actions": []}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{RULES}/override/a%2Fb", {"actions": []}, 400, "M_INVALID_PARAM"),
        # A push rule path short of a rule ID: 400, not 405 or a redirect.
        ("PUT", f"{CS}/pushrules/", {"actions": []}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{CS}/pushrules/global", {"actions": []}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{RULES}/", {"actions": []}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{RULES}/room", {"actions": []}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{RULES}/room/", {"actions": []}, 400, "M_INVALID_PARAM"),
        ("GET", f"{RULES}/override/.m.rule.master/not_an_attr", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{RULES}/bogus/", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{CS}/pushrules/device/room/", None, 400, "M_INVALID_PARAM"),
        (
            "PUT",
            f"{RULES}/content/y?before=nope",
            {"pattern": "y", "actions": []},
            400,
            "M_UNKNOWN",
        ),
        ("PUT", f"{RULES}/content/y?after=nope", {"pattern": "y", "actions": []}, 400, "M_UNKNOWN"),
        (
            "PUT",
            f"{RULES}/override/y?before=.m.rule.master",
            {"actions": []},
            400,
            "M_INVALID_PARAM",
        ),
        ("GET", f"{RULES}/content/nope", None, 404, "M_NOT_FOUND"),
        ("GET", f"{RULES}/bogus/x", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{CS}/pushrules/device/", None, 400, "M_INVALID_PARAM"),
        ("DELETE", f"{RULES}/content/nope", None, 404, "M_NOT_FOUND"),
        ("DELETE", f"{RULES}/override/.m.rule.master", None, 400, "M_INVALID_PARAM"),
        ("DELETE", f"{RULES}/override/.m.rule.nope", None, 404, "M_NOT_FOUND"),
        ("GET", f"{RULES}/content/nope/enabled", None, 404, "M_NOT_FOUND"),
        ("PUT", f"{RULES}/content/nope/enabled", {"enabled": True}, 404, "M_NOT_FOUND"),
        (
            "PUT",
            f"{RULES}/override/.m.rule.message/enabled",
            {"enabled": True},
            404,
            "M_NOT_FOUND",
        ),  # an underride rule, asked for as an override
        ("PUT", f"{RULES}/content/x/enabled", {"enabled": "yes"}, 400, "M_BAD_JSON"),
        ("PUT", f"{RULES}/content/x/enabled", {}, 400, "M_MISSING_PARAM"),
        ("GET", f"{RULES}/content/nope/actions", None, 404, "M_NOT_FOUND"),
        ("PUT", f"{RULES}/content/nope/actions", {"actions": []}, 404, "M_NOT_FOUND"),
        ("PUT", f"{RULES}/content/x/actions", {}, 400, "M_MISSING_PARAM"),
        ("PUT", f"{RULES}/content/x/actions", {"actions": [1]}, 400, "M_BAD_JSON"),
    ]
    for method, path, body, status, errcode in cases:
        r = await client.request(method, path, json=body, headers=h)
        assert (r.status_code, r.json().get("errcode")) == (status, errcode), (method, path, r.text)
    r = await client.get(f"{CS}/pushrules/")
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


async def _room(client: httpx.AsyncClient, owner: str, *members: str) -> str:
    r = await client.post(
        f"{CS}/createRoom", json={"preset": "public_chat"}, headers=auth_header(owner)
    )
    room_id = str(r.json()["room_id"])
    for token in members:
        r = await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(token))
        assert r.status_code == 200, r.text
    return room_id


async def _send(
    client: httpx.AsyncClient, token: str, room_id: str, txn: str, content: dict[str, Any]
) -> str:
    r = await client.put(
        f"{CS}/rooms/{room_id}/send/m.room.message/{txn}", json=content, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def test_rules_decide_counts(client: httpx.AsyncClient) -> None:
    alice, a = await register(client, "alice")
    _, b = await register(client, "bob")
    _, c = await register(client, "carol")
    room_id = await _room(client, a, b, c)  # three members: no one-to-one rules
    await _put(
        client,
        b,
        f"{RULES}/content/cake",
        {"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]},
    )
    await _send(client, a, room_id, "1", {"msgtype": "m.text", "body": "hello"})
    await _send(client, a, room_id, "2", {"msgtype": "m.text", "body": "cake time"})
    await _send(client, a, room_id, "3", {"msgtype": "m.notice", "body": "bot says"})
    await _send(
        client,
        a,
        room_id,
        "4",
        {"msgtype": "m.text", "body": "bob?", "m.mentions": {"user_ids": ["@carol:test"]}},
    )
    counts_b = (await _sync(client, b))["rooms"]["join"][room_id]["unread_notifications"]
    counts_c = (await _sync(client, c))["rooms"]["join"][room_id]["unread_notifications"]
    assert counts_b == {"notification_count": 3, "highlight_count": 1}
    assert counts_c == {"notification_count": 3, "highlight_count": 1}
    # A muted room: no notification at all; the sender's own events never count.
    await _put(client, c, f"{RULES}/room/{room_id}", {"actions": []})
    await _send(client, a, room_id, "5", {"msgtype": "m.text", "body": "more"})
    counts_c = (await _sync(client, c))["rooms"]["join"][room_id]["unread_notifications"]
    assert counts_c["notification_count"] == 3
    counts_a = (await _sync(client, a))["rooms"]["join"][room_id]["unread_notifications"]
    assert counts_a == {"notification_count": 0, "highlight_count": 0}
    assert alice == "@alice:test"


async def test_rules_of_one_kind_and_ids_that_match_nothing(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    h = auth_header(token)
    # A room rule named by something else than a room ID (SyTest uses aliases) is kept,
    # as Synapse keeps it: it only ever matches a room with that ID, which none has.
    await _put(client, token, f"{RULES}/room/%23spam:example.com", {"actions": []})
    await _put(client, token, f"{RULES}/sender/not-a-user", {"actions": []})
    # GET .../{kind}/: the rules of that kind (as Synapse answers).
    r = await client.get(f"{RULES}/room/", headers=h)
    assert r.status_code == 200, r.text
    assert [rule["rule_id"] for rule in r.json()] == ["#spam:example.com"]
    r = await client.get(f"{RULES}/sender/", headers=h)
    assert [rule["rule_id"] for rule in r.json()] == ["not-a-user"]
    r = await client.get(f"{RULES}/override/", headers=h)
    assert ".m.rule.master" in [rule["rule_id"] for rule in r.json()]
