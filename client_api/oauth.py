"""The spec's OAuth 2.0 API: /auth_metadata and the endpoints it names (config ``oauth``)."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from client_api.account import client_ip
from client_api.oauth_pages import device_link_page, error_page, message_page, sign_in_page
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.json_limits import loads_limited
from homeserver.core.types import JsonDict
from homeserver.oauth.errors import OAuthError
from homeserver.oauth.service import OAuthService, RedirectError
from homeserver.web.edge import json_response, read_body, services_of

CSRF_COOKIE = "oauth_csrf"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True, slots=True)
class OAuthServices:
    oauth: OAuthService | None  # None: the OAuth 2.0 API is off
    server_name: str
    secure_cookies: bool


def _oauth(request: Request) -> tuple[OAuthServices, OAuthService]:
    hs = services_of(request, OAuthServices)
    if hs.oauth is None:
        raise MatrixError(Codes.UNRECOGNIZED, "The OAuth 2.0 API is not enabled", status=404)
    return hs, hs.oauth


def _oauth_error(e: OAuthError) -> Response:
    return json_response(
        {"error": e.error, "error_description": e.description},
        status_code=e.status,
        headers=_NO_STORE,
    )


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body; a parameter given twice is refused
    (RFC 6749 section 3.1)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    raw = await read_body(request)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as e:
        raise OAuthError("invalid_request", "the body is not UTF-8") from e
    return _unique(pairs)


def _unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise OAuthError("invalid_request", f"parameter {key} is given more than once")
        if "\x00" in key or "\x00" in value:
            raise OAuthError("invalid_request", "parameters must not hold NUL")
        out[key] = value
    return out


async def get_auth_metadata(request: Request) -> Response:
    """GET /_matrix/client/v1/auth_metadata"""
    _, oauth = _oauth(request)
    return json_response(oauth.metadata())


async def post_register(request: Request) -> Response:
    """POST /oauth2/register (RFC 7591)"""
    _, oauth = _oauth(request)
    raw = await read_body(request)
    try:
        body = loads_limited(raw)
    except MatrixError as e:
        return _oauth_error(OAuthError("invalid_client_metadata", e.message))
    if not isinstance(body, dict):
        return _oauth_error(OAuthError("invalid_client_metadata", "the body must be an object"))
    try:
        registered: JsonDict = await oauth.register_client(body)
    except OAuthError as e:
        return _oauth_error(e)
    return json_response(registered, status_code=201, headers=_NO_STORE)


def _csrf_of(request: Request) -> tuple[str, bool]:
    """The browser's CSRF token and whether it is new (then it is set as a cookie)."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and 20 <= len(existing) <= 100:
        return existing, False
    return secrets.token_urlsafe(32), True


def _with_cookie(response: Response, hs: OAuthServices, csrf: str, new: bool) -> Response:
    if new:
        response.set_cookie(
            CSRF_COOKIE,
            csrf,
            path="/oauth2/",
            httponly=True,
            # Lax: the cookie comes back with the redirect chain of single sign-on; forms
            # are POSTs, which Lax does not send across sites.
            samesite="lax",
            secure=hs.secure_cookies,
        )
    return response


async def authorize(request: Request) -> Response:
    """GET /oauth2/authorize (the sign-in page), POST (its form)"""
    hs, oauth = _oauth(request)
    try:
        if request.method == "GET":
            params = _unique(list(request.query_params.multi_items()))
        else:
            params = await _form(request)
        auth_request = await oauth.check_authorization_request(params)
    except OAuthError as e:
        return error_page(e.description)
    except RedirectError as e:
        return RedirectResponse(e.location, status_code=303)
    csrf, new = _csrf_of(request)
    if request.method == "GET" and "loginToken" in params:
        # Back from single sign-on: the same browser (its CSRF token) and a valid token.
        if new or not hmac.compare_digest(params.get("sso_csrf", ""), csrf):
            return error_page(
                "This sign-in did not start in this browser; please start again.", 403
            )
        user_id = await oauth.user_of_login_token(params["loginToken"])
        if user_id is None:
            return error_page("This sign-in has expired; please start again.", 403)
        return RedirectResponse(await oauth.grant(auth_request, user_id), status_code=303)
    if request.method == "GET":
        clean = {k: v for k, v in params.items() if k not in ("loginToken", "sso_csrf")}
        providers = [
            (name, oauth.sso_redirect_url(idp_id, clean, csrf))
            for idp_id, name in oauth.sso_providers
        ]
        page = sign_in_page(auth_request, clean, csrf, hs.server_name, providers=providers)
        return _with_cookie(page, hs, csrf, new)
    if new or not hmac.compare_digest(params.get("csrf", ""), csrf):
        return _with_cookie(
            error_page("This form has expired; please start signing in again.", 403),
            hs,
            csrf,
            new,
        )
    if params.get("action") == "deny":
        return RedirectResponse(oauth.denied(auth_request), status_code=303)
    username = params.get("username", "")
    password = params.get("password", "")
    try:
        if auth_request.create:
            if password != params.get("confirm"):
                raise MatrixError(Codes.INVALID_PARAM, "The two passwords differ.")
            user_id = await oauth.register(username, password, client_ip(request))
        else:
            user_id = await oauth.check_password(username, password, client_ip(request))
    except MatrixError as e:
        message, status = _refusal(e)
        page = sign_in_page(
            auth_request,
            params,
            csrf,
            hs.server_name,
            error=message,
            username=username,
            status=status,
        )
        return page
    return RedirectResponse(await oauth.grant(auth_request, user_id), status_code=303)


async def post_device(request: Request) -> Response:
    """POST /oauth2/device (RFC 8628 device authorization)"""
    _, oauth = _oauth(request)
    try:
        out = await oauth.start_device_grant(await _form(request))
    except OAuthError as e:
        return _oauth_error(e)
    return json_response(out, headers=_NO_STORE)


def _refusal(e: MatrixError) -> tuple[str, int]:
    if e.code == Codes.LIMIT_EXCEEDED:
        return "Too many attempts; please wait a while before trying again.", 429
    return e.message, 403 if e.status == 403 else 400


async def device_link(request: Request) -> Response:
    """GET /oauth2/device-link (where a person types the device's code), POST (its form)"""
    hs, oauth = _oauth(request)
    csrf, new = _csrf_of(request)
    if request.method == "GET":
        code = request.query_params.get("code", "")[:20]
        return _with_cookie(device_link_page(csrf, hs.server_name, user_code=code), hs, csrf, new)
    try:
        form = await _form(request)
    except OAuthError as e:
        return error_page(e.description)
    if new or not hmac.compare_digest(form.get("csrf", ""), csrf):
        page = error_page("This form has expired; please start again.", 403)
        return _with_cookie(page, hs, csrf, new)
    user_code, username = form.get("code", "")[:20], form.get("username", "")
    grant = await oauth.device_grant_for_user_code(user_code)
    if form.get("action") == "deny":
        if grant is not None:
            await oauth.decide_device_grant(grant, None)
        return message_page("Device not linked", "The device was refused.")
    try:
        user_id = await oauth.check_password(username, form.get("password", ""), client_ip(request))
    except MatrixError as e:
        message, status = _refusal(e)
        return device_link_page(
            csrf,
            hs.server_name,
            user_code=user_code,
            username=username,
            error=message,
            status=status,
        )
    if grant is None or not await oauth.decide_device_grant(grant, user_id):
        return device_link_page(
            csrf,
            hs.server_name,
            user_code=user_code,
            username=username,
            error="This code is unknown or has expired.",
            status=400,
        )
    name = await oauth.client_name(grant.client_id)
    return message_page("Device linked", f"{name} is now signed in; you can go back to it.")


async def post_token(request: Request) -> Response:
    """POST /oauth2/token"""
    _, oauth = _oauth(request)
    try:
        form = await _form(request)
        out = await oauth.token(form, client_ip(request))
    except OAuthError as e:
        return _oauth_error(e)
    return json_response(out, headers=_NO_STORE)


async def post_revoke(request: Request) -> Response:
    """POST /oauth2/revoke (RFC 7009)"""
    _, oauth = _oauth(request)
    try:
        await oauth.revoke(await _form(request))
    except OAuthError as e:
        return _oauth_error(e)
    return json_response({}, headers=_NO_STORE)


client_routes = [Route("/v1/auth_metadata", get_auth_metadata, methods=["GET"])]

root_routes = [
    Route("/oauth2/register", post_register, methods=["POST"]),
    Route("/oauth2/authorize", authorize, methods=["GET", "POST"]),
    Route("/oauth2/token", post_token, methods=["POST"]),
    Route("/oauth2/device", post_device, methods=["POST"]),
    Route("/oauth2/device-link", device_link, methods=["GET", "POST"]),
    Route("/oauth2/revoke", post_revoke, methods=["POST"]),
]
