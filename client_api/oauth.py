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
from client_api.oauth_pages import (
    account_page,
    account_sign_in_page,
    device_link_page,
    error_page,
    message_page,
    sign_in_page,
)
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.json_limits import loads_limited
from homeserver.core.types import JsonDict
from homeserver.oauth.errors import OAuthError
from homeserver.oauth.service import ACCOUNT_ACTION_ALIASES, OAuthService, RedirectError
from homeserver.web.edge import json_response, read_body, services_of

CSRF_COOKIE = "oauth_csrf"
ACCOUNT_COOKIE = "oauth_account"
_ACCOUNT = "/oauth2/account"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of secrets; any text (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode(), expected.encode())


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
        registered: JsonDict = await oauth.register_client(body, client_ip(request))
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
        if new or not _same(params.get("sso_csrf", ""), csrf):
            return error_page(
                "This sign-in did not start in this browser; please start again.", 403
            )
        user_id = await oauth.user_of_login_token(params["loginToken"])
        if user_id is None:
            return error_page("This sign-in has expired; please start again.", 403)
        # Signed in here now; the person still sees which client asks and says yes (the
        # consent form's answer goes to the client, which its CSP allows).
        page = sign_in_page(
            auth_request, _without_sso(params), csrf, hs.server_name, signed_in_as=user_id
        )
        _set_account_cookie(page, hs, await oauth.start_browser_session(user_id))
        return page
    if request.method == "GET":
        clean = _without_sso(params)
        providers = [
            (name, oauth.sso_redirect_url(idp_id, clean, csrf))
            for idp_id, name in oauth.sso_providers
        ]
        signed_in = None
        if params.get("prompt") not in ("login", "create"):
            signed_in = await oauth.browser_user(request.cookies.get(ACCOUNT_COOKIE))
        page = sign_in_page(
            auth_request,
            clean,
            csrf,
            hs.server_name,
            providers=providers,
            signed_in_as=signed_in,
        )
        return _with_cookie(page, hs, csrf, new)
    if new or not _same(params.get("csrf", ""), csrf):
        return _with_cookie(
            error_page("This form has expired; please start signing in again.", 403),
            hs,
            csrf,
            new,
        )
    if params.get("action") == "deny":
        return RedirectResponse(oauth.denied(auth_request), status_code=303)
    if params.get("action") == "consent" and not auth_request.create:
        # Consent of a browser already signed in (the account session cookie).
        signed_in = await oauth.browser_user(request.cookies.get(ACCOUNT_COOKIE))
        if signed_in is not None:
            return RedirectResponse(await oauth.grant(auth_request, signed_in), status_code=303)
        return sign_in_page(
            auth_request,
            params,
            csrf,
            hs.server_name,
            error="Your session here has ended; please sign in.",
            status=403,
        )
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
    response = RedirectResponse(await oauth.grant(auth_request, user_id), status_code=303)
    _set_account_cookie(response, hs, await oauth.start_browser_session(user_id))
    return response


def _without_sso(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k not in ("loginToken", "sso_csrf")}


def _set_account_cookie(response: Response, hs: OAuthServices, token: str) -> None:
    """The browser's account session: the account page and later consents need no password
    for an hour."""
    response.set_cookie(
        ACCOUNT_COOKIE,
        token,
        path="/oauth2/",
        httponly=True,
        samesite="strict",
        secure=hs.secure_cookies,
        max_age=3600,
    )


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
    if new or not _same(form.get("csrf", ""), csrf):
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


async def _account_form(request: Request) -> tuple[OAuthServices, OAuthService, dict[str, str]]:
    hs, oauth = _oauth(request)
    try:
        form = await _form(request)
    except OAuthError as e:
        raise _PageError(error_page(e.description)) from e
    csrf = request.cookies.get(CSRF_COOKIE, "")
    if not csrf or not _same(form.get("csrf", ""), csrf):
        raise _PageError(error_page("This form has expired; please start again.", 403))
    return hs, oauth, form


class _PageError(Exception):
    def __init__(self, page: Response) -> None:
        super().__init__("page")
        self.page = page


async def account(request: Request) -> Response:
    """GET /oauth2/account: the account management URL (spec: actions in the query)"""
    hs, oauth = _oauth(request)
    csrf, new = _csrf_of(request)
    user_id = await oauth.browser_user(request.cookies.get(ACCOUNT_COOKIE))
    if user_id is None:
        page = account_sign_in_page(csrf, hs.server_name, request.url.query[:2048])
        return _with_cookie(page, hs, csrf, new)
    action = request.query_params.get("action", "")
    action = ACCOUNT_ACTION_ALIASES.get(action, action)
    device_id = request.query_params.get("device_id")
    devices = await oauth.devices(user_id)
    known = device_id is not None and any(d.device_id == device_id for d in devices)
    page = account_page(
        csrf,
        hs.server_name,
        user_id,
        await oauth.displayname(user_id),
        [(d.device_id, d.display_name, d.last_seen_ts) for d in devices],
        focus=device_id if known else None,
        ending=device_id if known and action == "org.matrix.device_delete" else None,
        error="No such session." if device_id is not None and not known else None,
    )
    return _with_cookie(page, hs, csrf, new)


async def account_sign_in(request: Request) -> Response:
    """POST /oauth2/account/sign-in"""
    try:
        hs, oauth, form = await _account_form(request)
    except _PageError as e:
        return e.page
    try:
        user_id = await oauth.check_password(
            form.get("username", ""), form.get("password", ""), client_ip(request)
        )
    except MatrixError as e:
        message, status = _refusal(e)
        return account_sign_in_page(
            form["csrf"], hs.server_name, form.get("next", ""), error=message, status=status
        )
    token = await oauth.start_browser_session(user_id)
    next_query = form.get("next", "")
    target = _ACCOUNT + (f"?{next_query}" if next_query else "")
    response = RedirectResponse(target, status_code=303)
    _set_account_cookie(response, hs, token)
    return response


async def _signed_in(request: Request) -> tuple[OAuthServices, OAuthService, dict[str, str], str]:
    hs, oauth, form = await _account_form(request)
    user_id = await oauth.browser_user(request.cookies.get(ACCOUNT_COOKIE))
    if user_id is None:
        raise _PageError(RedirectResponse(_ACCOUNT, status_code=303))
    return hs, oauth, form, user_id


async def account_session_end(request: Request) -> Response:
    """POST /oauth2/account/session-end"""
    try:
        _, oauth, form, user_id = await _signed_in(request)
    except _PageError as e:
        return e.page
    if not await oauth.end_device(UserID(user_id), form.get("device_id", "")):
        return error_page("No such session.", 404)
    return RedirectResponse(_ACCOUNT, status_code=303)


async def account_profile(request: Request) -> Response:
    """POST /oauth2/account/profile"""
    try:
        _, oauth, form, user_id = await _signed_in(request)
    except _PageError as e:
        return e.page
    try:
        await oauth.set_displayname(UserID(user_id), form.get("displayname", ""))
    except MatrixError as e:
        return error_page(e.message, 400)
    return RedirectResponse(_ACCOUNT, status_code=303)


async def account_sign_out(request: Request) -> Response:
    """POST /oauth2/account/sign-out"""
    try:
        _, oauth, _, _ = await _signed_in(request)
    except _PageError as e:
        return e.page
    await oauth.end_browser_session(request.cookies.get(ACCOUNT_COOKIE, ""))
    response = RedirectResponse(_ACCOUNT, status_code=303)
    response.delete_cookie(ACCOUNT_COOKIE, path="/oauth2/")
    return response


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
    Route("/oauth2/account", account, methods=["GET"]),
    Route("/oauth2/account/sign-in", account_sign_in, methods=["POST"]),
    Route("/oauth2/account/session-end", account_session_end, methods=["POST"]),
    Route("/oauth2/account/profile", account_profile, methods=["POST"]),
    Route("/oauth2/account/sign-out", account_sign_out, methods=["POST"]),
    Route("/oauth2/revoke", post_revoke, methods=["POST"]),
]
