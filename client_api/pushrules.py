"""Push rules (spec: "Push Rules: API")."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.push.rules import KINDS
from homeserver.push.service import PushRuleService
from homeserver.web.edge import (
    RequestBody,
    json_response,
    parse_body,
    read_json_object,
    require_user,
    services_of,
)


@dataclass(frozen=True, slots=True)
class PushRuleServices:
    """What the routes of push rules call (built by the composition root)."""

    push_rules: PushRuleService


class EnabledBody(RequestBody):
    enabled: bool


def _where(request: Request) -> tuple[str, str, str]:
    p = request.path_params
    return p["scope"], p["kind"], p["rule_id"]


async def get_push_rules(request: Request) -> Response:
    """GET /_matrix/client/v3/pushrules/"""
    hs = services_of(request, PushRuleServices)
    requester = await require_user(request)
    return json_response({"global": await hs.push_rules.get_all(requester)})


async def get_push_rules_scope(request: Request) -> Response:
    """GET /_matrix/client/v3/pushrules/global/"""
    hs = services_of(request, PushRuleServices)
    requester = await require_user(request)
    if request.path_params["scope"] != "global":
        raise MatrixError(Codes.INVALID_PARAM, "The only push rule scope is 'global'")
    return json_response(await hs.push_rules.get_all(requester))


async def get_push_rule(request: Request) -> Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}; with no rule ID (the path
    ends in {kind}/), the rules of that kind, as Synapse answers"""
    hs = services_of(request, PushRuleServices)
    requester = await require_user(request)
    scope, kind, rule_id = _where(request)
    if rule_id == "":
        if scope != "global":
            raise MatrixError(Codes.INVALID_PARAM, "The only push rule scope is 'global'")
        if kind not in KINDS:
            raise MatrixError(Codes.INVALID_PARAM, f"Unknown push rule kind {kind!r}")
        rules = (await hs.push_rules.get_all(requester))[kind]
        return json_response(rules)
    if "/" in rule_id:
        # Rule IDs have no "/": what follows one is an attribute, and only /enabled and
        # /actions exist.
        raise MatrixError(Codes.INVALID_PARAM, "Unknown push rule attribute")
    rule = await hs.push_rules.get_rule(requester, scope, kind, rule_id)
    return json_response(rule.to_json())


async def put_incomplete(request: Request) -> Response:
    """PUT on a push rule path without a scope, kind or rule ID: a 400 that says which (not
    405, nor a redirect to a path that would need one)."""
    await require_user(request)
    p = request.path_params
    missing = "scope" if "scope" not in p else "kind" if "kind" not in p else "rule ID"
    raise MatrixError(Codes.INVALID_PARAM, f"A push rule path needs a {missing}")


async def put_push_rule(request: Request) -> Response:
    """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
    hs = services_of(request, PushRuleServices)
    requester = await require_user(request)
    body = await read_json_object(request)
    scope, kind, rule_id = _where(request)
    await hs.push_rules.put_rule(
        requester,
        scope,
        kind,
        rule_id,
        body,
        request.query_params.get("before"),
        request.query_params.get("after"),
    )
    return json_response({})


async def delete_push_rule(request: Request) -> Response:
    """DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
    hs = services_of(request, PushRuleServices)
    requester = await require_user(request)
    await hs.push_rules.delete_rule(requester, *_where(request))
    return json_response({})


async def get_push_rule_enabled(request: Request) -> Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled"""
    hs = services_of(request, PushRuleServices)
    requester = await require_user(request)
    rule = await hs.push_rules.get_rule(requester, *_where(request))
    return json_response({"enabled": rule.enabled})


async def put_push_rule_enabled(request: Request) -> Response:
    """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled"""
    hs = services_of(request, PushRuleServices)
    requester = await require_user(request)
    body = await parse_body(request, EnabledBody)
    await hs.push_rules.set_enabled(requester, *_where(request), body.enabled)
    return json_response({})


async def get_push_rule_actions(request: Request) -> Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions"""
    hs = services_of(request, PushRuleServices)
    requester = await require_user(request)
    rule = await hs.push_rules.get_rule(requester, *_where(request))
    return json_response({"actions": list(rule.actions)})


async def put_push_rule_actions(request: Request) -> Response:
    """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions"""
    hs = services_of(request, PushRuleServices)
    requester = await require_user(request)
    body = await read_json_object(request)
    if "actions" not in body:
        raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: actions")
    await hs.push_rules.set_actions(requester, *_where(request), body["actions"])
    return json_response({})


_RULE = "/v3/pushrules/{scope}/{kind}/{rule_id}"
# The /enabled and /actions routes come first; a rule ID holding "/" (sent as %2F) reaches the
# last route, whose {rule_id:path} lets PUT refuse it with a 400.
client_routes = [
    Route("/v3/pushrules/", get_push_rules, methods=["GET"]),
    Route("/v3/pushrules", get_push_rules, methods=["GET"]),
    Route("/v3/pushrules/{scope}/", get_push_rules_scope, methods=["GET"]),
    Route("/v3/pushrules/{scope}", get_push_rules_scope, methods=["GET"]),
    Route(_RULE + "/enabled", get_push_rule_enabled, methods=["GET"]),
    Route(_RULE + "/enabled", put_push_rule_enabled, methods=["PUT"]),
    Route(_RULE + "/actions", get_push_rule_actions, methods=["GET"]),
    Route(_RULE + "/actions", put_push_rule_actions, methods=["PUT"]),
    Route("/v3/pushrules/", put_incomplete, methods=["PUT"]),
    Route("/v3/pushrules/{scope}", put_incomplete, methods=["PUT"]),
    Route("/v3/pushrules/{scope}/", put_incomplete, methods=["PUT"]),
    Route("/v3/pushrules/{scope}/{kind}", put_incomplete, methods=["PUT"]),
    Route("/v3/pushrules/{scope}/{kind}/{rule_id:path}", get_push_rule, methods=["GET"]),
    Route("/v3/pushrules/{scope}/{kind}/{rule_id:path}", put_push_rule, methods=["PUT"]),
    Route("/v3/pushrules/{scope}/{kind}/{rule_id:path}", delete_push_rule, methods=["DELETE"]),
]
