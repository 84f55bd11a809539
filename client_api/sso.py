"""Single sign-on: ``/login/sso/redirect``, the upstream provider's callback, the
choose-a-username page (config ``sso``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from client_api.oauth_pages import (
    choose_username_page,
    confirm_destination_page,
    error_page,
    reauth_done_page,
    reauth_page,
)
from homeserver.accounts.sso import (
    ChooseUsername,
    ConfirmDestination,
    Reauthenticated,
    SsoFailure,
    SsoService,
    Started,
)
from homeserver.core.errors import Codes, MatrixError
from homeserver.web.edge import json_response, read_body, services_of

SESSION_COOKIE = "sso_session"
_COOKIE_PATH = "/oauth2/upstream/"


@dataclass(frozen=True, slots=True)
class SsoServices:
    sso: SsoService | None  # None: no provider configured
    server_name: str
    secure_cookies: bool


def _sso(request: Request) -> tuple[SsoServices, SsoService]:
    hs = services_of(request, SsoServices)
    if hs.sso is None:
        raise MatrixError(Codes.UNRECOGNIZED, "Single sign-on is not configured", status=404)
    return hs, hs.sso


async def sso_redirect(request: Request) -> Response:
    """GET /_matrix/client/v3/login/sso/redirect[/{idpId}]"""
    hs, sso = _sso(request)
    redirect_url = request.query_params.get("redirectUrl")
    if redirect_url is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: redirectUrl")
    started = await sso.start(request.path_params.get("idpId"), redirect_url)
    return _to_provider(hs, started)


def _to_provider(hs: SsoServices, started: Started) -> Response:
    response = RedirectResponse(started.location, status_code=302)
    response.set_cookie(
        SESSION_COOKIE,
        started.session_id,
        path=_COOKIE_PATH,
        httponly=True,
        samesite="lax",  # the provider's redirect back is a cross-site top-level GET
        secure=hs.secure_cookies,
        max_age=600,
    )
    return response


async def upstream_callback(request: Request) -> Response:
    """GET /oauth2/upstream/callback (the provider sends the browser back here)"""
    hs, sso = _sso(request)
    params = {k: v for k, v in request.query_params.items()}
    try:
        result = await sso.callback(request.cookies.get(SESSION_COOKIE), params)
    except SsoFailure as e:
        return error_page(e.message, e.status)
    if isinstance(result, ChooseUsername):
        return choose_username_page(
            result.provider_name,
            hs.server_name,
            result.csrf,
            suggestion=result.suggestion,
            destination=result.destination,
            form_target=result.redirect_url,
        )
    if isinstance(result, Reauthenticated):
        done = reauth_done_page()
        done.delete_cookie(SESSION_COOKIE, path=_COOKIE_PATH)
        return done
    if isinstance(result, ConfirmDestination):
        return confirm_destination_page(
            result.user_id, result.destination, result.csrf, result.redirect_url
        )
    response = RedirectResponse(result.location, status_code=302)
    response.delete_cookie(SESSION_COOKIE, path=_COOKIE_PATH)
    return response


async def auth_fallback(request: Request) -> Response:
    """GET /_matrix/client/v3/auth/{authType}/fallback/web (m.login.sso: re-authentication
    with the account's provider for user-interactive authentication)"""
    if request.path_params["auth_type"] != "m.login.sso":
        return error_page("This server has no fallback page for this authentication stage", 404)
    session = request.query_params.get("session")
    if not session:
        return error_page("Missing parameter: session")
    hs = services_of(request, SsoServices)
    if hs.sso is None:
        return error_page("Single sign-on is not configured on this server", 404)
    try:
        if request.query_params.get("continue") == "1":
            return _to_provider(hs, await hs.sso.start_reauth(session))
        user_id, what, provider_name = await hs.sso.describe_reauth(session)
    except MatrixError as e:
        return error_page(e.message, e.status)
    onward = f"web?{urlencode({'session': session, 'continue': '1'})}"
    return reauth_page(user_id, what, provider_name, onward)


async def choose_username(request: Request) -> Response:
    """POST /oauth2/upstream/username"""
    hs, sso = _sso(request)
    raw = await read_body(request)
    try:
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8")).items()}
    except UnicodeDecodeError:
        return error_page("The form is not UTF-8")
    session_id = request.cookies.get(SESSION_COOKIE)
    username = form.get("username", "")
    try:
        finished = await sso.choose_username(session_id, form.get("csrf", ""), username)
    except SsoFailure as e:
        return error_page(e.message, e.status)
    except MatrixError as e:
        try:
            session, claims = await sso.pending(session_id)
        except SsoFailure as failure:
            return error_page(failure.message, failure.status)
        provider = sso.provider(session.provider)
        return choose_username_page(
            provider.name,
            hs.server_name,
            str(claims.get("_csrf", "")),
            suggestion=username,
            error=e.message,
            status=e.status,
            destination=urlsplit(session.redirect_url).netloc,
            form_target=session.redirect_url,
        )
    response = RedirectResponse(finished.location, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=_COOKIE_PATH)
    return response


async def confirm(request: Request) -> Response:
    """POST /oauth2/upstream/confirm (a returning user continues to the client)"""
    _, sso = _sso(request)
    raw = await read_body(request)
    try:
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8")).items()}
    except UnicodeDecodeError:
        return error_page("The form is not UTF-8")
    try:
        finished = await sso.confirm(request.cookies.get(SESSION_COOKIE), form.get("csrf", ""))
    except SsoFailure as e:
        return error_page(e.message, e.status)
    response = RedirectResponse(finished.location, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=_COOKIE_PATH)
    return response


async def backchannel_logout(request: Request) -> Response:
    """POST /oauth2/upstream/backchannel-logout/{idpId} (the provider, server to server)"""
    _, sso = _sso(request)
    raw = await read_body(request)
    try:
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8")).items()}
    except UnicodeDecodeError:
        form = {}
    headers = {"Cache-Control": "no-store"}
    token = form.get("logout_token")
    if not token:
        return json_response(
            {"error": "invalid_request", "error_description": "logout_token is missing"},
            status_code=400,
            headers=headers,
        )
    try:
        await sso.backchannel_logout(request.path_params["idpId"], token)
    except SsoFailure as e:
        return json_response(
            {"error": "invalid_request", "error_description": e.message},
            status_code=400,
            headers=headers,
        )
    return Response(status_code=200, headers=headers)


client_routes = [
    Route("/v3/login/sso/redirect", sso_redirect, methods=["GET"]),
    Route("/v3/login/sso/redirect/{idpId}", sso_redirect, methods=["GET"]),
    Route("/v3/auth/{auth_type}/fallback/web", auth_fallback, methods=["GET"]),
]

root_routes = [
    Route("/oauth2/upstream/callback", upstream_callback, methods=["GET"]),
    Route("/oauth2/upstream/username", choose_username, methods=["POST"]),
    Route("/oauth2/upstream/confirm", confirm, methods=["POST"]),
    Route("/oauth2/upstream/backchannel-logout/{idpId}", backchannel_logout, methods=["POST"]),
]
