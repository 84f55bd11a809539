"""Sign-in in a real browser: headless Chromium (playwright-core) against the server under
uvicorn and a real OpenID Connect provider (node-oidc-provider) on loopback.

- Single sign-on: a new person signs in at the provider, chooses a username on our page and
  lands in the client with a login token that ``m.login.token`` takes; a second sign-in
  reaches the same account; the provider's logout ends the sessions (back-channel logout).
- The OAuth 2.0 API as Element X uses it, with Authlib's client: discovery, dynamic client
  registration, the authorization code grant with PKCE through our sign-in page (typed with
  the keyboard), token, ``/sync``, refresh, revoke; and the same page's single sign-on button.

The node packages install from the npm registry at the versions of
``browser/package-lock.json`` into ``~/.cache/homeserver-tests/`` on first use (``npm ci``);
Chromium is Debian's (``apt-get install chromium`` when ``/usr/bin/chromium`` is missing).
A machine where either cannot be installed fails these tests with the reason."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.httpx_client import OAuthError as ClientOAuthError

from tests.e2e.conftest import ServerProcess, free_port
from tests.helpers import login

HERE = Path(__file__).parent / "browser"
CACHE = Path.home() / ".cache" / "homeserver-tests"
CHROMIUM = Path("/usr/bin/chromium")
NPM_TIMEOUT_S = 300
APT_TIMEOUT_S = 900
STEP_TIMEOUT_S = 40
LOGOUT_WAIT_S = 10
CLIENT_DONE = "https://client.example/done"
APP = "https://app.example"
REDIRECT = f"{APP}/callback"
API = "urn:matrix:client:api:*"
PASSWORD = "correct horse battery"


# --- installing what the browser needs -----------------------------------------------------


def _run(command: list[str], timeout: int, cwd: Path | None = None) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"the browser tests could not run {' '.join(command)}: {e}")
    if done.returncode != 0:
        pytest.fail(
            f"the browser tests could not run {' '.join(command)} "
            f"(exit {done.returncode}): {(done.stderr or done.stdout)[-2000:]}"
        )


def _chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.fail(f"{CHROMIUM} is missing and apt-get is not there to install chromium")
    lock_timeout = ["-o", f"DPkg::Lock::Timeout={APT_TIMEOUT_S}"]
    _run(["apt-get", *lock_timeout, "update"], APT_TIMEOUT_S)
    _run(["apt-get", *lock_timeout, "install", "-y", "chromium"], APT_TIMEOUT_S)
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


def _node_packages() -> Path:
    """A directory with the scripts beside their node_modules."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the browser tests (oidc-provider, playwright)")
    lock = (HERE / "package-lock.json").read_bytes()
    where = CACHE / ("browser-" + hashlib.sha256(lock).hexdigest()[:16])
    where.mkdir(parents=True, exist_ok=True)
    with open(where / ".install.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # xdist workers: one installs, the others wait
        if not (where / "node_modules" / "playwright-core").is_dir():
            for name in ("package.json", "package-lock.json"):
                shutil.copy(HERE / name, where / name)
            _run(
                ["npm", "ci", "--no-audit", "--no-fund", "--engine-strict=false"],
                NPM_TIMEOUT_S,
                cwd=where,
            )
        for name in ("provider.mjs", "browser.mjs"):
            shutil.copy(HERE / name, where / name)
    return where


@pytest.fixture(scope="session")
def node_dir() -> Path:
    return _node_packages()


@pytest.fixture(scope="session")
def chromium() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".chromium-install.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        return _chromium()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the pages' screenshots go: ``$SIGN_IN_SCREENSHOTS`` (to keep them), else a
    temporary directory of the run."""
    chosen = os.environ.get("SIGN_IN_SCREENSHOTS")
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        return Path(chosen).resolve()
    return tmp_path_factory.mktemp("sign-in-screenshots")


# --- the provider, the server, the browser -------------------------------------------------


class Provider:
    def __init__(self, node_dir: Path, port: int, homeserver: str) -> None:
        self.issuer = f"http://127.0.0.1:{port}"
        self.log = node_dir / f"provider-{port}.log"
        with open(self.log, "w") as log:
            self._proc = subprocess.Popen(
                [
                    "node",
                    "provider.mjs",
                    str(port),
                    f"{homeserver}/oauth2/upstream/callback",
                    f"{homeserver}/oauth2/upstream/backchannel-logout/corp",
                ],
                cwd=node_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_listening(self) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(f"oidc-provider stopped: {self.log.read_text()[-2000:]}")
            if '"listening"' in self.log.read_text():
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"oidc-provider did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


@pytest.fixture(scope="session")
def signin(
    tmp_path_factory: pytest.TempPathFactory, node_dir: Path, chromium_process: Browser
) -> Iterator[tuple[ServerProcess, Provider]]:
    """One server and provider for the run (per xdist worker): starting them was most of
    this file's time. The tests use accounts of their own. SQLite, the server's own file:
    the sign-in storage runs on both databases in tests/api/test_oauth.py and test_sso.py,
    and a session-long server must not share the PostgreSQL database other tests truncate."""
    tmp_path = tmp_path_factory.mktemp("signin")
    provider_port = free_port()
    server = ServerProcess(
        tmp_path,
        None,
        oauth={"enabled": True},
        sso={
            "providers": [
                {
                    "id": "corp",
                    "name": "Corp SSO",
                    "issuer": f"http://127.0.0.1:{provider_port}",
                    "client_id": "matrix",
                    "client_secret": "s3cret",
                }
            ]
        },
    )
    # Chromium (a fixture of this one for that reason) and the provider start while the
    # server does.
    provider = Provider(node_dir, provider_port, server.base_url)
    try:
        server.start()
        try:
            provider.wait_listening()
            yield server, provider
        finally:
            server.stop()
    finally:
        provider.stop()


class Browser:
    """One headless Chromium for the run; a command a line to ``browser.mjs`` and its answer
    back. Blocking pipes, read in a thread: the process outlives each test's event loop."""

    def __init__(self, node_dir: Path, chromium: Path) -> None:
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            ["node", "browser.mjs", str(chromium)],
            cwd=node_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._ready = False

    async def new_context(self) -> None:
        if not self._ready:  # its first line says it started
            await self._answer()
            self._ready = True
        await self.do("new_context")

    async def _answer(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self._proc.stdout.readline), STEP_TIMEOUT_S)
        if not line:
            self._stderr.seek(0)
            error = self._stderr.read().decode(errors="replace")
            raise AssertionError(f"the browser stopped: {error[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def do(self, op: str, **args: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self._proc.stdin.flush()
        answer = await self._answer()
        assert answer["ok"], f"{op} {args}: {answer}"
        return answer

    def stop(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()


@pytest.fixture(scope="session")
def chromium_process(node_dir: Path, chromium: Path) -> Iterator[Browser]:
    started = Browser(node_dir, chromium)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def browser(chromium_process: Browser) -> Browser:
    """The run's Chromium with a fresh context (no cookies, no scripts of an earlier test)."""
    await chromium_process.new_context()
    return chromium_process


# --- helpers ---------------------------------------------------------------------------------


async def provider_sign_in(browser: Browser, issuer: str, login: str) -> dict[str, Any]:
    """node-oidc-provider's own pages: any login and password, then its consent page (the
    first time this browser signs in to our server there)."""
    page = await browser.do("text")
    assert "Sign-in" in page["text"], page
    await browser.do("fill", selector="input[name=login]", value=login)
    await browser.do("fill", selector="input[name=password]", value="anything")
    page = await browser.do("click", selector="button[type=submit]")
    if page["url"].startswith(issuer):
        text = (await browser.do("text"))["text"]
        assert "Continue" in text, text
        page = await browser.do("click", selector="button[type=submit]")
    return page


async def sso_again(browser: Browser, start: str, provider: Provider) -> str:
    """A returning person: (the provider,) our confirmation, the client's login token."""
    page = await browser.do("goto", url=start)
    if page["url"].startswith(provider.issuer):
        page = await provider_sign_in(browser, provider.issuer, "alice.smith")
    page = await browser.do("click", selector="button[type=submit]")
    assert page["url"].startswith(CLIENT_DONE + "?loginToken="), page
    return query_of(page["url"])["loginToken"][0]


async def assert_labelled(browser: Browser) -> None:
    """The page's form controls each have a label (accessibility: a name for each)."""
    answer = await browser.do("unlabelled")
    assert answer["missing"] == [], answer


async def look_at(browser: Browser, shots: Path, name: str) -> None:
    """One of our pages as a person sees it: labelled controls; screenshots at 1280 and 360
    CSS px, light and dark; and nothing the audit of ``browser.mjs`` finds (horizontal
    scroll, hidden or small targets, WCAG AA contrast of text, control boundaries, focus)."""
    await assert_labelled(browser)
    answer = await browser.do("audit", name=name, dir=str(shots))
    assert answer["problems"] == [], f"{name} ({answer['url']}):\n" + "\n".join(answer["problems"])
    assert len(answer["shots"]) == 4 and all(Path(p).stat().st_size > 0 for p in answer["shots"])


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


async def whoami(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get(
        "/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"}
    )


async def token_login(http: httpx.AsyncClient, login_token: str) -> str:
    r = await http.post(
        "/_matrix/client/v3/login", json={"type": "m.login.token", "token": login_token}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


# --- the audit itself ------------------------------------------------------------------------

_BAD_PAGE = (
    '<!doctype html><html lang="en"><head><meta name="viewport" content="width=device-width">'
    "<style>body{margin:0;background:#fff;color:#111}.pale{color:#999}"
    ".wide{width:600px}.big{font-size:24px;color:#888}"
    "input{border:0;background:#fff;outline:none}"
    "button{width:30px;height:20px;padding:0;font-size:10px;background:#eee;border:0}"
    "#cover{position:absolute;left:0;top:0;width:200px;height:200px;background:#fff}"
    "@media (prefers-color-scheme:dark){body{background:#000;color:#333}}"
    "</style></head><body><p class=pale>pale text</p><p class=big>large and grey</p>"
    '<div class=wide>wide</div><label for=name>Name</label><input id=name value="typed">'
    "<button>Go</button><a href=#x>hidden link</a><div id=cover></div></body></html>"
)


async def test_the_audit_finds_each_kind_of_problem(browser: Browser, tmp_path: Path) -> None:
    """The page audit fails a page that breaks each of its rules (so its silence on our pages
    means something); large grey text at 3.5:1 passes where small would not."""
    await browser.do("set_content", html=_BAD_PAGE)
    problems = (await browser.do("audit", name="bad", dir=str(tmp_path)))["problems"]
    text = "\n".join(problems)

    def found(fragment: str) -> bool:
        return any(fragment in problem for problem in problems)

    assert found("360px light: horizontal scroll: scrollWidth 600 > 360"), text
    assert not found("1280px light: horizontal scroll"), text
    assert found('light: text contrast 2.85 < 4.5 of <p.pale> "pale text"'), text
    assert not found("<p.big>"), text  # #888 on white is 3.54:1, large text needs 3
    assert found('dark: text contrast 1.66 < 4.5 of <label> "Name"'), text  # #333 on #000
    assert found('target 30x20 < 44x44: <button> "Go"'), text
    assert found("boundary contrast 1.00 < 3 of <input#name>"), text
    assert found('no focus outline of 2 px or more: <input#name> "typed"'), text
    assert found('covered by <div#cover> "": <input#name> "typed"'), text
    assert found('no focus outline of 2 px or more: <a> "hidden link"'), text
    assert len(list(tmp_path.glob("bad-*.png"))) == 4


# --- single sign-on --------------------------------------------------------------------------


async def test_sso_through_a_real_provider_second_sign_in_and_provider_logout(
    signin: tuple[ServerProcess, Provider], browser: Browser, shots: Path
) -> None:
    server, provider = signin
    start = (
        f"{server.base_url}/_matrix/client/v3/login/sso/redirect/corp"
        f"?redirectUrl={quote(CLIENT_DONE, safe='')}"
    )
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        flows = (await http.get("/_matrix/client/v3/login")).json()["flows"]
        sso_flow = next(f for f in flows if f["type"] == "m.login.sso")
        assert sso_flow["identity_providers"] == [{"id": "corp", "name": "Corp SSO"}]

        # A new person: the provider's pages, then our choose-a-username page.
        page = await browser.do("goto", url=start)
        assert page["url"].startswith(provider.issuer), page
        page = await provider_sign_in(browser, provider.issuer, "alice.smith")
        assert page["url"].startswith(f"{server.base_url}/oauth2/upstream/callback"), page
        await look_at(browser, shots, "sso-choose-username")
        text = (await browser.do("text"))["text"]
        assert "Corp SSO" in text and "client.example" in text, text
        await browser.do("fill", selector="#username", value="alice")
        page = await browser.do("click", selector="button[type=submit]")
        assert page["url"].startswith(CLIENT_DONE + "?loginToken="), page
        first = await token_login(http, query_of(page["url"])["loginToken"][0])
        who = await whoami(http, first)
        assert who.json()["user_id"] == "@alice:localhost"
        sync = await http.get(
            "/_matrix/client/v3/sync?timeout=0", headers={"Authorization": f"Bearer {first}"}
        )
        assert sync.status_code == 200, sync.text
        profile = await http.get("/_matrix/client/v3/profile/@alice:localhost/displayname")
        assert profile.json() == {"displayname": "Person alice.smith"}

        # The second sign-in: the provider remembers the person; we ask before handing the
        # account to the client, and it is the same account.
        page = await browser.do("goto", url=start)
        if page["url"].startswith(provider.issuer):
            page = await provider_sign_in(browser, provider.issuer, "alice.smith")
        text = (await browser.do("text"))["text"]
        assert "@alice:localhost" in text and "client.example" in text, text
        await look_at(browser, shots, "sso-confirm-destination")
        page = await browser.do("click", selector="button[type=submit]")
        assert page["url"].startswith(CLIENT_DONE + "?loginToken="), page
        second = await token_login(http, query_of(page["url"])["loginToken"][0])
        assert (await whoami(http, second)).json()["user_id"] == "@alice:localhost"
        # A login token is used once.
        again = await http.post(
            "/_matrix/client/v3/login",
            json={"type": "m.login.token", "token": query_of(page["url"])["loginToken"][0]},
        )
        assert again.status_code == 403 and again.json()["errcode"] == "M_FORBIDDEN"

        # An account with no password confirms a device deletion with its provider: the UIA
        # fallback page in the browser, and the client resubmits with the session.
        await browser.do("watch_auth_done")
        bearer = {"Authorization": f"Bearer {first}"}
        body: dict[str, Any] = {"devices": [who.json()["device_id"]]}
        challenge = await http.post("/_matrix/client/v3/delete_devices", json=body, headers=bearer)
        assert challenge.json()["flows"] == [{"stages": ["m.login.sso"]}], challenge.text
        session = challenge.json()["session"]
        await browser.do("console_errors")  # forget the earlier pages' ones
        page = await browser.do(
            "goto",
            url=f"{server.base_url}/_matrix/client/v3/auth/m.login.sso/fallback/web"
            f"?session={session}",
        )
        assert "delete devices" in (await browser.do("text"))["text"]
        await look_at(browser, shots, "uia-fallback-sso")
        page = await browser.do("click", selector="a.allow")
        if page["url"].startswith(provider.issuer):
            page = await provider_sign_in(browser, provider.issuer, "alice.smith")
        assert page["url"].startswith(f"{server.base_url}/oauth2/upstream/callback"), page
        # Its script ran under the page's CSP and told the app.
        assert page["title"] == "onAuthDone called", page
        assert (await browser.do("console_errors"))["errors"] == []
        await look_at(browser, shots, "uia-fallback-done")
        deleted = await http.post(
            "/_matrix/client/v3/delete_devices",
            json={**body, "auth": {"session": session}},
            headers=bearer,
        )
        assert deleted.status_code == 200, deleted.text
        assert (await whoami(http, first)).status_code == 401
        first = await token_login(http, await sso_again(browser, start, provider))

        # The provider's logout: it tells us over the back channel; both sessions end.
        page = await browser.do("goto", url=f"{provider.issuer}/session/end")
        page = await browser.do("click", selector="button[name=logout]")
        deadline = time.monotonic() + LOGOUT_WAIT_S
        while (await whoami(http, first)).status_code == 200:
            assert time.monotonic() < deadline, "the back-channel logout did not arrive"
            await asyncio.sleep(0.2)
        for token in (first, second):
            ended = await whoami(http, token)
            assert ended.status_code == 401 and ended.json()["errcode"] == "M_UNKNOWN_TOKEN"


# --- the OAuth 2.0 API -----------------------------------------------------------------------


async def _register_password_user(http: httpx.AsyncClient, name: str) -> None:
    r = await http.post(
        "/_matrix/client/v3/register",
        json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert r.status_code == 200, r.text


async def _registered_client(http: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    meta: dict[str, Any] = (await http.get("/_matrix/client/v1/auth_metadata")).json()
    r = await http.post(
        meta["registration_endpoint"],
        json={
            "client_name": "Element X (browser test)",
            "client_uri": APP,
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "application_type": "web",
        },
    )
    assert r.status_code == 201, r.text
    return meta, str(r.json()["client_id"])


def _oauth_client(client_id: str, device: str) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=client_id,
        redirect_uri=REDIRECT,
        scope=f"{API} urn:matrix:client:device:{device}",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
        revocation_endpoint_auth_method="none",
        timeout=30,
    )


async def test_oauth_code_flow_in_the_browser_then_sync_refresh_revoke(
    signin: tuple[ServerProcess, Provider], browser: Browser, shots: Path
) -> None:
    server, _ = signin
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        await _register_password_user(http, "bob")
        meta, client_id = await _registered_client(http)
        assert meta["issuer"] == f"{server.base_url}/"
        async with _oauth_client(client_id, "PHONE") as oauth:
            verifier = generate_token(48)
            url, state = oauth.create_authorization_url(
                meta["authorization_endpoint"], code_verifier=verifier
            )
            page = await browser.do("goto", url=url)
            assert page["title"] == "Sign in to localhost", page
            await look_at(browser, shots, "oauth-sign-in")
            text = (await browser.do("text"))["text"]
            assert "Element X (browser test)" in text and "Corp SSO" in text, text
            # Keyboard only: the username field has the focus; Tab to the password, Enter.
            await browser.do("fill", selector="#username", value="bob")
            focused = (await browser.do("press", key="Tab"))["focused"]
            assert focused["id"] == "password", focused
            await browser.do("fill", selector="#password", value=PASSWORD)
            page = await browser.do("press_and_wait", key="Enter")
            assert page["url"].startswith(REDIRECT + "?"), page
            assert query_of(page["url"])["state"] == [state]

            token = await oauth.fetch_token(
                meta["token_endpoint"], authorization_response=page["url"], code_verifier=verifier
            )
            bearer = {"Authorization": f"Bearer {token['access_token']}"}
            who = (await http.get("/_matrix/client/v3/account/whoami", headers=bearer)).json()
            assert who == {"user_id": "@bob:localhost", "device_id": "PHONE", "is_guest": False}
            sync = await http.get("/_matrix/client/v3/sync?timeout=0", headers=bearer)
            assert sync.status_code == 200, sync.text

            refreshed = await oauth.refresh_token(meta["token_endpoint"])
            assert refreshed["access_token"] != token["access_token"]
            assert (await whoami(http, token["access_token"])).status_code == 401
            new_bearer = {"Authorization": f"Bearer {refreshed['access_token']}"}
            since = sync.json()["next_batch"]
            sync = await http.get(
                f"/_matrix/client/v3/sync?timeout=0&since={since}", headers=new_bearer
            )
            assert sync.status_code == 200, sync.text

            revoked = await oauth.revoke_token(
                meta["revocation_endpoint"], token=refreshed["refresh_token"]
            )
            assert revoked.status_code == 200
            assert (await whoami(http, refreshed["access_token"])).status_code == 401
            with pytest.raises(ClientOAuthError) as refused:
                await oauth.refresh_token(meta["token_endpoint"])
            assert refused.value.error == "invalid_grant"


async def test_oauth_sign_in_page_through_the_upstream_provider(
    signin: tuple[ServerProcess, Provider], browser: Browser, shots: Path
) -> None:
    """Element X against a server whose people sign in with their organisation's provider:
    our OAuth sign-in page, its single sign-on button, the provider, a new account, consent."""
    server, provider = signin
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        meta, client_id = await _registered_client(http)
        async with _oauth_client(client_id, "TABLET") as oauth:
            verifier = generate_token(48)
            url, state = oauth.create_authorization_url(
                meta["authorization_endpoint"], code_verifier=verifier
            )
            await browser.do("goto", url=url)
            page = await browser.do("click", selector="ul.sso a")
            assert page["url"].startswith(provider.issuer), page
            page = await provider_sign_in(browser, provider.issuer, "carol")
            await browser.do("fill", selector="#username", value="carol")
            page = await browser.do("click", selector="button[type=submit]")
            # Back on the authorization: the consent page names the new account.
            assert page["url"].startswith(f"{server.base_url}/oauth2/authorize"), page
            text = (await browser.do("text"))["text"]
            assert "@carol:localhost" in text and "Element X (browser test)" in text, text
            await look_at(browser, shots, "oauth-consent")
            page = await browser.do("click", selector="button[value=consent]")
            assert page["url"].startswith(REDIRECT + "?"), page
            assert query_of(page["url"])["state"] == [state]
            token = await oauth.fetch_token(
                meta["token_endpoint"], authorization_response=page["url"], code_verifier=verifier
            )
            who = (await whoami(http, token["access_token"])).json()
            assert who == {"user_id": "@carol:localhost", "device_id": "TABLET", "is_guest": False}


async def test_every_other_sign_in_page_wide_narrow_light_and_dark(
    signin: tuple[ServerProcess, Provider], browser: Browser, shots: Path
) -> None:
    """The pages the journeys above do not reach: an error, the sign-in page refusing a
    password, registration (``prompt=create``), linking a device and refusing it, the account
    page's own sign-in and the account page ending a session (its table of sessions)."""
    server, _ = signin
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        page = await browser.do("goto", url=f"{server.base_url}/oauth2/authorize")
        text = (await browser.do("text"))["text"]
        assert "Sign-in failed" in text and "Unknown client" in text, text
        await look_at(browser, shots, "error")

        await _register_password_user(http, "dave")
        meta, client_id = await _registered_client(http)
        async with _oauth_client(client_id, "LAPTOP") as oauth:
            url, _ = oauth.create_authorization_url(
                meta["authorization_endpoint"], code_verifier=generate_token(48)
            )
            await browser.do("goto", url=url)
            await browser.do("fill", selector="#username", value="dave")
            await browser.do("fill", selector="#password", value="not the password")
            page = await browser.do("click", selector="button[value=allow]")
            assert page["url"] == f"{server.base_url}/oauth2/authorize", page
            alert = (await browser.do("text"))["text"]
            assert "Sign in to localhost" in alert and "password" in alert.lower(), alert
            await look_at(browser, shots, "oauth-sign-in-refused")

            url, _ = oauth.create_authorization_url(
                meta["authorization_endpoint"], code_verifier=generate_token(48), prompt="create"
            )
            page = await browser.do("goto", url=url)
            assert page["title"] == "Create an account on localhost", page
            await look_at(browser, shots, "oauth-create-account")

        page = await browser.do("goto", url=f"{server.base_url}/oauth2/device-link?code=WDJB-MJHT")
        assert page["title"] == "Link a device to localhost", page
        await look_at(browser, shots, "device-link")
        page = await browser.do("click", selector="button[value=deny]")
        assert page["title"] == "Device not linked", page
        await look_at(browser, shots, "device-not-linked")

        await login(
            http,
            "dave",
            PASSWORD,
            device_id="DAVESPHONE",
            initial_device_display_name="Dave's phone with a long name",
        )
        page = await browser.do(
            "goto",
            url=f"{server.base_url}/oauth2/account"
            "?action=org.matrix.device_delete&device_id=DAVESPHONE",
        )
        assert page["title"] == "Your account", page
        await look_at(browser, shots, "account-sign-in")
        await browser.do("fill", selector="#username", value="dave")
        await browser.do("fill", selector="#password", value=PASSWORD)
        page = await browser.do("click", selector="button[type=submit]")
        text = (await browser.do("text"))["text"]
        assert "End the session DAVESPHONE?" in text and "Dave's phone" in text, text
        await look_at(browser, shots, "account-end-session")
