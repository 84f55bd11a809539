"""Third-party identifiers (spec: "Adding Account Administrative Contact Information") and
the e-mail validation they need: requestToken, the submit_url and its mailed link.

E-mail only, validated by the homeserver itself; phone numbers, registration with an
address and identity-server binds are refused with the spec's error codes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from client_api.account import challenge_response, client_ip, uia_fingerprint
from homeserver.accounts.email_validation import (
    PURPOSE_ADD,
    PURPOSE_PASSWORD_RESET,
    EmailValidation,
    TokenRequest,
    Validated,
)
from homeserver.accounts.threepids import ThreepidService
from homeserver.core.errors import Codes, MatrixError
from homeserver.web.edge import (
    RequestBody,
    json_response,
    parse_body,
    read_body,
    require_user,
    services_of,
    validate_body,
)


@dataclass(frozen=True, slots=True)
class ThreepidServices:
    """What the routes of e-mail addresses and their validation call."""

    threepids: ThreepidService
    email_validation: EmailValidation


# --- requestToken ------------------------------------------------------------------------------


class RequestTokenBody(RequestBody):
    client_secret: str
    email: str
    send_attempt: int
    next_link: str | None = None
    # id_server and id_access_token: ignored, the homeserver validates addresses itself.


async def _request_token(request: Request, purpose: str) -> Response:
    hs = services_of(request, ThreepidServices)
    body = await parse_body(request, RequestTokenBody)
    result = await hs.email_validation.request_token(
        purpose,
        TokenRequest(
            client_secret=body.client_secret,
            email=body.email,
            send_attempt=body.send_attempt,
            next_link=body.next_link,
            client_ip=client_ip(request),
        ),
    )
    return json_response({"sid": result.sid, "submit_url": result.submit_url})


async def post_3pid_email_request_token(request: Request) -> Response:
    """POST /_matrix/client/v3/account/3pid/email/requestToken"""
    return await _request_token(request, PURPOSE_ADD)


async def post_password_email_request_token(request: Request) -> Response:
    """POST /_matrix/client/v3/account/password/email/requestToken"""
    return await _request_token(request, PURPOSE_PASSWORD_RESET)


async def post_register_email_request_token(request: Request) -> Response:
    """POST /_matrix/client/v3/register/email/requestToken"""
    raise MatrixError(
        Codes.THREEPID_DENIED,
        "Registration with an e-mail address is not "
        "supported on this server; register, then add the address",
    )


async def post_msisdn_request_token(request: Request) -> Response:
    """POST /_matrix/client/v3/{register,account/3pid,account/password}/msisdn/requestToken"""
    raise MatrixError(
        Codes.THREEPID_MEDIUM_NOT_SUPPORTED, "This server does not support phone numbers"
    )


# --- /account/3pid ------------------------------------------------------------------------------


async def get_3pids(request: Request) -> Response:
    """GET /_matrix/client/v3/account/3pid"""
    hs = services_of(request, ThreepidServices)
    requester = await require_user(request)
    return json_response({"threepids": await hs.threepids.get_threepids(requester)})


class AddBody(RequestBody):
    sid: str
    client_secret: str
    auth: dict[str, Any] | None = None


async def post_3pid_add(request: Request) -> Response:
    """POST /_matrix/client/v3/account/3pid/add"""
    hs = services_of(request, ThreepidServices)
    requester = await require_user(request)
    body = await parse_body(request, AddBody)
    challenge = await hs.threepids.add_threepid(
        requester, body.sid, body.client_secret, body.auth, uia_fingerprint(request)
    )
    if challenge is not None:
        return challenge_response(challenge)
    return json_response({})


class ThreePidCreds(RequestBody):
    client_secret: str
    sid: str
    id_server: str
    id_access_token: str | None = None  # r0.5-compatible clients omit it


class BindBody(ThreePidCreds):
    pass


class LegacyAddBody(RequestBody):
    three_pid_creds: ThreePidCreds


async def post_3pid_bind(request: Request) -> Response:
    """POST /_matrix/client/v3/account/3pid/bind and the deprecated POST .../account/3pid"""
    await require_user(request)
    if request.url.path.endswith("/bind"):
        await parse_body(request, BindBody)
    else:
        await parse_body(request, LegacyAddBody)
    # spec: M_SERVER_NOT_TRUSTED, the identity server is not one this server works with (it
    # works with none); addresses are added with /account/3pid/add.
    raise MatrixError(
        Codes.SERVER_NOT_TRUSTED,
        "This server does not bind addresses on identity servers; use /account/3pid/add",
    )


class ThreepidBody(RequestBody):
    medium: str
    address: str
    id_server: str | None = None


async def post_3pid_delete(request: Request) -> Response:
    """POST /_matrix/client/v3/account/3pid/delete"""
    hs = services_of(request, ThreepidServices)
    requester = await require_user(request)
    body = await parse_body(request, ThreepidBody)
    await hs.threepids.delete_threepid(requester, body.medium, body.address)
    # spec: no-support, as no identity server is known to unbind from.
    return json_response({"id_server_unbind_result": "no-support"})


async def post_3pid_unbind(request: Request) -> Response:
    """POST /_matrix/client/v3/account/3pid/unbind"""
    await require_user(request)
    body = await parse_body(request, ThreepidBody)
    if body.medium not in ("email", "msisdn"):
        raise MatrixError(Codes.INVALID_PARAM, "medium must be email or msisdn")
    return json_response({"id_server_unbind_result": "no-support"})


# --- the submit_url and the mailed link ---------------------------------------------------------


class SubmitBody(RequestBody):
    sid: str
    client_secret: str
    token: str


_PAGE = (
    '<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title></head>'
    "<body><h1>{title}</h1><p>{text}</p>{form}</body></html>"
)
# The page carries the token in its URL and a button that validates: nothing may frame it,
# load anything from elsewhere or send its address on.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _page(title: str, text: str, form: str = "", status: int = 200) -> Response:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), text=html.escape(text), form=form),
        status_code=status,
        headers=_PAGE_HEADERS,
    )


def _done(validated: Validated) -> Response:
    if validated.next_link is not None:
        return RedirectResponse(validated.next_link, status_code=302, headers=_PAGE_HEADERS)
    if validated.purpose == PURPOSE_PASSWORD_RESET:
        return _page("Address confirmed", "Go back to your client to choose a new password.")
    return _page(
        "Address confirmed",
        "Your e-mail address has been validated. Go back to your client to finish adding it.",
    )


def _confirm_form(body: SubmitBody) -> str:
    fields = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(value, True)}">'
        for name, value in (
            ("sid", body.sid),
            ("client_secret", body.client_secret),
            ("token", body.token),
        )
    )
    return (
        f'<form method="post">{fields}<button type="submit">Yes, it was me: reset my '
        "password</button></form>"
    )


def _wants_html(request: Request) -> bool:
    """A browser (the link in a mail) rather than a client: errors as a page, not JSON."""
    return "text/html" in request.headers.get("accept", "")


def _error_page(e: MatrixError) -> Response:
    return _page("This link does not work", e.message, status=e.status)


async def get_submit_token(request: Request) -> Response:
    """GET of the link in a validation mail (the Identity Service's GET submitToken)."""
    hs = services_of(request, ThreepidServices)
    try:
        body = validate_body(dict(request.query_params), SubmitBody)
        validated = await hs.email_validation.open_link(body.sid, body.client_secret, body.token)
    except MatrixError as e:
        if _wants_html(request):
            return _error_page(e)
        raise
    if not validated.validated:
        return _page(
            "Reset your password?",
            "Someone asked to reset the password of the "
            "account with this e-mail address. If it was you, confirm; if not, close "
            "this page and nothing changes.",
            _confirm_form(body),
        )
    return _done(validated)


async def post_submit_token(request: Request) -> Response:
    """The submit_url of requestToken (spec: as the Identity Service's POST submitToken), and
    the confirmation form of the link's page (a form post: answered with a page)."""
    hs = services_of(request, ThreepidServices)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        body = await parse_body(request, SubmitBody)
        await hs.email_validation.submit_token(body.sid, body.client_secret, body.token)
        return json_response({"success": True})
    try:
        form = dict(parse_qsl((await read_body(request)).decode("utf-8", "replace")))
        body = validate_body(form, SubmitBody)
        validated = await hs.email_validation.submit_token(body.sid, body.client_secret, body.token)
    except MatrixError as e:
        return _error_page(e)
    return _done(validated)


client_routes = [
    Route("/v3/account/3pid", get_3pids, methods=["GET"]),
    Route("/v3/account/3pid", post_3pid_bind, methods=["POST"]),
    Route("/v3/account/3pid/add", post_3pid_add, methods=["POST"]),
    Route("/v3/account/3pid/bind", post_3pid_bind, methods=["POST"]),
    Route("/v3/account/3pid/delete", post_3pid_delete, methods=["POST"]),
    Route("/v3/account/3pid/unbind", post_3pid_unbind, methods=["POST"]),
    Route("/v3/account/3pid/email/requestToken", post_3pid_email_request_token, methods=["POST"]),
    Route(
        "/v3/account/password/email/requestToken",
        post_password_email_request_token,
        methods=["POST"],
    ),
    Route("/v3/register/email/requestToken", post_register_email_request_token, methods=["POST"]),
    Route("/v3/account/3pid/msisdn/requestToken", post_msisdn_request_token, methods=["POST"]),
    Route("/v3/account/password/msisdn/requestToken", post_msisdn_request_token, methods=["POST"]),
    Route("/v3/register/msisdn/requestToken", post_msisdn_request_token, methods=["POST"]),
]
root_routes = [
    Route("/_homeserver/client/email/submit_token", get_submit_token, methods=["GET"]),
    Route("/_homeserver/client/email/submit_token", post_submit_token, methods=["POST"]),
]
