"""The OAuth 2.0 API's sign-in page: server-rendered, small, no script, no third-party
assets; its one style sheet is inline and allowed by its hash in the Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse

from homeserver.oauth.service import AuthorizationRequest

# Light and dark (the browser's prefers-color-scheme), each passing WCAG AA: text 4.5:1 or
# more, control boundaries and the focus outline 3:1 or more; every control and link a target
# of 44x44 CSS px at least; nothing wider than a 360 px screen (tests/e2e/
# test_browser_sign_in.py measures all of it in Chromium).
_CSS = (
    ":root{color-scheme:light dark;--bg:#fff;--fg:#111;--field:#fff;--line:#555;"
    "--accent:#0b4f9c;--on-accent:#fff;--ring:#b35900;--error:#a00000}"
    "@media (prefers-color-scheme:dark){:root{--bg:#111;--fg:#eee;--field:#222;--line:#aaa;"
    "--accent:#8cc4ff;--on-accent:#111;--ring:#e8a200;--error:#ff8a8a}}"
    "body{font:1rem/1.5 system-ui,sans-serif;margin:0;background:var(--bg);color:var(--fg);"
    "overflow-wrap:anywhere}"
    "main{max-width:26rem;margin:2rem auto;padding:0 1rem}"
    "h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}"
    "label{display:block;margin-top:1rem;font-weight:600}"
    "input,button{box-sizing:border-box;min-height:44px;min-width:44px;font:inherit;"
    "border-radius:4px}"
    "input{width:100%;padding:.5rem;background:var(--field);color:var(--fg);"
    "border:1px solid var(--line)}"
    "button{margin-top:1.2rem;margin-right:.5rem;padding:.5rem 1.2rem;cursor:pointer;"
    "border:1px solid var(--accent)}"
    ".allow{background:var(--accent);color:var(--on-accent)}"
    ".deny{background:var(--bg);color:var(--accent)}"
    "a{display:inline-block;box-sizing:border-box;min-height:44px;min-width:44px;"
    "padding:10px 0;color:var(--accent)}"
    "a.allow{padding:10px 1.2rem;border-radius:4px;text-decoration:none}"
    "ul.sso{padding-left:1.2rem}"
    "a:focus,button:focus,input:focus{outline:3px solid var(--ring);outline-offset:2px}"
    "table{border-collapse:collapse;width:100%;font-size:.875rem}"
    "td,th{text-align:left;padding:.3rem .25rem;border-bottom:1px solid var(--line)}"
    "th,button{overflow-wrap:normal}td button{margin:0;padding:.5rem .75rem}"
    ".current{outline:3px solid var(--ring)}"
    ".error{color:var(--error);font-weight:600}"
)
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()


# spec, User-Interactive Authentication, fallback: the page that ends a fallback tells the
# client (an embedding app's onAuthDone, or the window that opened it).
_AUTH_DONE_SCRIPT = (
    "if(window.onAuthDone){window.onAuthDone();}"
    'else if(window.opener&&window.opener.postMessage){window.opener.postMessage("authDone","*");}'
)
_AUTH_DONE_HASH = base64.b64encode(hashlib.sha256(_AUTH_DONE_SCRIPT.encode()).digest()).decode()


def _csp(form_target: str | None, script: bool = False) -> str:
    form_action = "'self'"
    if form_target is not None:
        parts = urlsplit(form_target)
        origin = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"
        form_action += f" {origin}"
    scripts = f"script-src 'sha256-{_AUTH_DONE_HASH}'; " if script else ""
    return (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; {scripts}"
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


def _page(
    title: str, body: str, status: int, form_target: str | None = None, *, script: bool = False
) -> HTMLResponse:
    tail = f"<script>{_AUTH_DONE_SCRIPT}</script>" if script else ""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main>{tail}</body></html>"
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Content-Security-Policy": _csp(form_target, script),
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def error_page(description: str, status: int = 400) -> HTMLResponse:
    body = f'<h1>Sign-in failed</h1><p class="error" role="alert">{escape(description)}</p>'
    return _page("Sign-in failed", body, status)


def sign_in_page(
    request: AuthorizationRequest,
    params: dict[str, str],
    csrf: str,
    server_name: str,
    *,
    providers: Sequence[tuple[str, str]] = (),  # (name, URL) of single sign-on
    signed_in_as: str | None = None,  # the browser's account session: consent only
    error: str | None = None,
    username: str = "",
    status: int = 200,
) -> HTMLResponse:
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
        for k, v in sorted(params.items())
        if k not in ("csrf", "username", "password", "confirm", "action")
    )
    alert = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    if request.create:
        body = (
            f"<h1>Create an account on {escape(server_name)}</h1>"
            f"<p><strong>{escape(request.client_name)}</strong> "
            f"(<span>{escape(request.client_uri)}</span>) will use the new account.</p>"
            f"{alert}"
            '<form method="post" action="authorize">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">{hidden}'
            '<label for="username">Username</label>'
            f'<input id="username" name="username" autocomplete="username" required '
            f'value="{escape(username)}" autofocus>'
            '<label for="password">Password</label>'
            '<input id="password" name="password" type="password" '
            'autocomplete="new-password" required>'
            '<label for="confirm">Password again</label>'
            '<input id="confirm" name="confirm" type="password" '
            'autocomplete="new-password" required>'
            '<button class="allow" type="submit" name="action" value="register">'
            "Create account and allow</button>"
            '<button class="deny" type="submit" name="action" value="deny" formnovalidate>'
            "Deny</button></form>"
        )
        return _page(f"Create an account on {server_name}", body, status, request.redirect_uri)
    if signed_in_as is not None:
        body = (
            f"<h1>Allow access to your account on {escape(server_name)}?</h1>"
            f"<p><strong>{escape(request.client_name)}</strong> "
            f"(<span>{escape(request.client_uri)}</span>) asks to use your account "
            f"<strong>{escape(signed_in_as)}</strong>.</p>{alert}"
            '<form method="post" action="authorize">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">{hidden}'
            '<button class="allow" type="submit" name="action" value="consent" autofocus>'
            "Allow</button>"
            '<button class="deny" type="submit" name="action" value="deny">Deny</button></form>'
            '<p><a href="account">Use another account</a> (sign out on the account page).</p>'
        )
        return _page(f"Allow access on {server_name}", body, status, request.redirect_uri)
    body = (
        f"<h1>Sign in to {escape(server_name)}</h1>"
        f"<p><strong>{escape(request.client_name)}</strong> "
        f"(<span>{escape(request.client_uri)}</span>) asks to use your account.</p>"
        f"{alert}"
        '<form method="post" action="authorize">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">{hidden}'
        '<label for="username">Username</label>'
        f'<input id="username" name="username" autocomplete="username" required '
        f'value="{escape(username)}" autofocus>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" '
        'autocomplete="current-password" required>'
        '<button class="allow" type="submit" name="action" value="allow">'
        "Sign in and allow</button>"
        '<button class="deny" type="submit" name="action" value="deny" formnovalidate>'
        "Deny</button></form>"
    )
    if providers:
        links = "".join(
            f'<li><a href="{escape(url)}">{escape(name)}</a></li>' for name, url in providers
        )
        body += f'<h2>Or sign in with</h2><ul class="sso">{links}</ul>'
    return _page(f"Sign in to {server_name}", body, status, request.redirect_uri)


def device_link_page(
    csrf: str,
    server_name: str,
    *,
    user_code: str = "",
    username: str = "",
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    alert = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        f"<h1>Link a device to {escape(server_name)}</h1>"
        "<p>Enter the code your device shows, then sign in to allow it.</p>"
        f"{alert}"
        '<form method="post" action="device-link">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<label for="code">Code from your device</label>'
        f'<input id="code" name="code" required autocomplete="one-time-code" '
        f'value="{escape(user_code)}" autofocus>'
        '<label for="username">Username</label>'
        f'<input id="username" name="username" autocomplete="username" required '
        f'value="{escape(username)}">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" '
        'autocomplete="current-password" required>'
        '<button class="allow" type="submit" name="action" value="allow">'
        "Sign in and allow</button>"
        '<button class="deny" type="submit" name="action" value="deny" formnovalidate>'
        "Deny</button></form>"
    )
    return _page(f"Link a device to {server_name}", body, status)


def message_page(title: str, message: str) -> HTMLResponse:
    body = f'<h1>{escape(title)}</h1><p role="status">{escape(message)}</p>'
    return _page(title, body, 200)


def choose_username_page(
    provider_name: str,
    server_name: str,
    csrf: str,
    *,
    destination: str = "",
    suggestion: str = "",
    error: str | None = None,
    status: int = 200,
    form_target: str | None = None,  # where the answer redirects: the client's redirectUrl
) -> HTMLResponse:
    alert = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        f"<h1>Choose your username on {escape(server_name)}</h1>"
        f"<p>You signed in with {escape(provider_name)} for the first time. "
        "Choose the username of your new account; you will then be signed in at "
        f"<strong>{escape(destination)}</strong>.</p>"
        f"{alert}"
        '<form method="post" action="username">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<label for="username">Username</label>'
        f'<input id="username" name="username" required autocomplete="username" '
        f'value="{escape(suggestion)}" autofocus>'
        '<button class="allow" type="submit">Create account</button></form>'
    )
    return _page("Choose your username", body, status, form_target)


def account_sign_in_page(
    csrf: str, server_name: str, query: str, *, error: str | None = None, status: int = 200
) -> HTMLResponse:
    alert = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        f"<h1>Your account on {escape(server_name)}</h1>{alert}"
        '<form method="post" action="account/sign-in">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<input type="hidden" name="next" value="{escape(query)}">'
        '<label for="username">Username</label>'
        '<input id="username" name="username" autocomplete="username" required autofocus>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" '
        'autocomplete="current-password" required>'
        '<button class="allow" type="submit">Sign in</button></form>'
    )
    return _page("Your account", body, status)


def _end_form(csrf: str, device_id: str, label: str) -> str:
    return (
        '<form method="post" action="account/session-end">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<input type="hidden" name="device_id" value="{escape(device_id)}">'
        f'<button class="deny" type="submit">{escape(label)}</button></form>'
    )


def _utc_minute(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def account_page(
    csrf: str,
    server_name: str,
    user_id: str,
    displayname: str | None,
    devices: Sequence[tuple[str, str | None, int | None]],
    *,
    focus: str | None = None,
    ending: str | None = None,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    alert = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    if notice:
        alert += f'<p role="status">{escape(notice)}</p>'
    confirm = ""
    if ending is not None:
        confirm = (
            f"<h2>End the session {escape(ending)}?</h2>"
            "<p>The device is signed out and its keys are deleted.</p>"
            + _end_form(csrf, ending, f"End session {ending}")
        )
    rows = ""
    for device_id, name, seen in devices:
        marked = ' class="current"' if device_id == focus else ""
        last = "" if seen is None else _utc_minute(seen)
        rows += (
            f"<tr{marked}><td>{escape(device_id)}</td><td>{escape(name or '')}</td>"
            f"<td>{last}</td><td>{_end_form(csrf, device_id, 'End')}</td></tr>"
        )
    body = (
        f"<h1>Your account on {escape(server_name)}</h1>"
        f"<p>Signed in as <strong>{escape(user_id)}</strong>.</p>{alert}{confirm}"
        "<h2>Profile</h2>"
        '<form method="post" action="account/profile">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<label for="displayname">Display name</label>'
        f'<input id="displayname" name="displayname" value="{escape(displayname or "")}">'
        '<button class="allow" type="submit">Save</button></form>'
        "<h2>Sessions</h2>"
        '<table><thead><tr><th scope="col">Device</th><th scope="col">Name</th>'
        '<th scope="col">Last seen (UTC)</th><th scope="col">'
        "Action</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        '<form method="post" action="account/sign-out">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<button class="deny" type="submit">Sign out of this page</button></form>'
    )
    return _page("Your account", body, status)


def confirm_destination_page(
    user_id: str, destination: str, csrf: str, form_target: str | None = None
) -> HTMLResponse:
    body = (
        f"<h1>Continue to {escape(destination)}?</h1>"
        f"<p>You are signing in as <strong>{escape(user_id)}</strong>. "
        f"<strong>{escape(destination)}</strong> will get access to your account. "
        "Continue only if you started this sign-in there.</p>"
        '<form method="post" action="confirm">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<button class="allow" type="submit">Continue</button></form>'
    )
    return _page(f"Continue to {destination}?", body, 200, form_target)


# What a UIA request does, by its path's end: said on the page that confirms it.
_REAUTH_PURPOSES = (
    ("/delete_devices", "sign out and delete devices of your account"),
    ("/account/deactivate", "deactivate your account for good"),
    ("/keys/device_signing/upload", "replace your cross-signing keys"),
    ("/account/password", "set a new password"),
    ("/account/3pid/add", "add an address to your account"),
    ("/login/get_token", "sign in another device"),
)


def _purpose(request: str) -> str:
    method, _, path = request.partition(" ")
    for suffix, purpose in _REAUTH_PURPOSES:
        if path.endswith(suffix):
            return purpose
    if method == "DELETE" and "/devices/" in path:
        return "sign out and delete a device of your account"
    return f"make the request {request}"


def reauth_page(user_id: str, request: str, provider_name: str, continue_url: str) -> HTMLResponse:
    """The UIA fallback of ``m.login.sso``: what is confirmed, then off to the provider."""
    body = (
        "<h1>Confirm it is you</h1>"
        f"<p>An app signed in as <strong>{escape(user_id)}</strong> asks to "
        f"<strong>{escape(_purpose(request))}</strong>.</p>"
        "<p>Continue only if you asked for this in your app. You will sign in with "
        f"{escape(provider_name)} to confirm.</p>"
        f'<p><a class="allow" href="{escape(continue_url)}">Continue with '
        f"{escape(provider_name)}</a></p>"
    )
    return _page("Confirm it is you", body, 200)


def reauth_done_page() -> HTMLResponse:
    body = (
        '<h1>Confirmed</h1><p role="status">You confirmed your identity. '
        "Return to your app to finish.</p>"
    )
    return _page("Confirmed", body, 200, script=True)
