"""Validating e-mail addresses by mail, as the homeserver does itself (no identity server).

``requestToken`` opens a session (the spec's ``sid``) for a client secret and an address and
mails a token, as a link to the server's ``submit_url``. Opening the link (or POSTing the
token to it) validates the session; the request it was for then uses it up:
``/account/3pid/add`` binds the address to the account (``threepids``), ``/account/password``
with an ``m.login.email.identity`` stage resets the owner's password (``uia``). Tokens are
random, stored hashed and expire; sessions expire too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from homeserver.core.clock import Clock
from homeserver.core.config import EmailConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.push.email import Mailer
from homeserver.storage.threepids import ThreepidStore, ValidationSession

logger = logging.getLogger(__name__)

MEDIUM_EMAIL = "email"
PURPOSE_ADD = "add"
PURPOSE_PASSWORD_RESET = "password_reset"
SUBMIT_PATH = "_homeserver/client/email/submit_token"
MAX_EMAIL_CHARS = 254  # RFC 5321: the longest path, so the longest usable address
MAX_NEXT_LINK_CHARS = 2048
MAX_SEND_ATTEMPT = 2**53  # clients count from 1; past this is not a counter
# Expired sessions are kept this long, so their links still answer "expired", not "unknown".
EXPIRED_KEPT_MS = 24 * 3600 * 1000
# spec: client_secret and sid are [0-9a-zA-Z.=_-], 1 to 255 characters.
_SECRET = re.compile(r"^[0-9a-zA-Z.=_-]{1,255}\Z")
# A plain address: no display name, comment, quoting or white space (none is needed to reach
# a mailbox, and none can smuggle a header into the mail).
_EMAIL = re.compile(r"^[^@\s<>\"(),;:\\\[\]]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\Z")


def canonical_email(address: str) -> str | None:
    """The address as stored and compared (lower case, like Synapse), or None if it is not a
    plain e-mail address."""
    address = address.strip().lower()
    if len(address) > MAX_EMAIL_CHARS or not _EMAIL.match(address):
        return None
    return address


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A requestToken body, as the route parsed it."""

    client_secret: str
    email: str
    send_attempt: int
    next_link: str | None
    client_ip: str | None


@dataclass(frozen=True, slots=True)
class RequestedToken:
    sid: str
    submit_url: str


@dataclass(frozen=True, slots=True)
class Validated:
    """A session whose token was accepted: what the link page says, and where it leads."""

    purpose: str
    next_link: str | None
    validated: bool  # False: only checked, the page asks to confirm


class EmailValidation:
    """Validation sessions, and what the UIA ``m.login.email.identity`` stage asks of them
    (``uia.EmailIdentity``)."""

    def __init__(
        self,
        store: ThreepidStore,
        ratelimiter: RateLimiter,
        clock: Clock,
        email: EmailConfig,
        base_url: str,
    ) -> None:
        self._store = store
        self._ratelimiter = ratelimiter
        self._clock = clock
        self._email = email
        self._mailer = Mailer(email)
        self._submit_url = base_url + SUBMIT_PATH

    @property
    def enabled(self) -> bool:
        """Whether the server can mail, so e-mail addresses can be added and used."""
        return self._email.enabled

    # --- requestToken ----------------------------------------------------------------------

    async def request_token(self, purpose: str, req: TokenRequest) -> RequestedToken:
        """POST /account/3pid/email/requestToken (``add``) and
        /account/password/email/requestToken (``password_reset``)."""
        if not self.enabled:
            raise MatrixError(
                Codes.THREEPID_MEDIUM_NOT_SUPPORTED, "This server does not send e-mail"
            )
        if not _SECRET.match(req.client_secret):
            raise MatrixError(
                Codes.INVALID_PARAM, "client_secret must be 1 to 255 characters of [0-9a-zA-Z.=_-]"
            )
        address = canonical_email(req.email)
        if address is None:
            raise MatrixError(Codes.INVALID_PARAM, "email is not a valid e-mail address")
        if not 0 <= req.send_attempt <= MAX_SEND_ATTEMPT:
            raise MatrixError(Codes.INVALID_PARAM, "send_attempt must be a positive integer")
        self._check_next_link(req.next_link)
        if req.client_ip is not None:
            await self._ratelimiter.check(Action.THREEPID_VALIDATION, f"ip:{req.client_ip}")
        owner = await self._store.get_owner(MEDIUM_EMAIL, address)
        # spec: adding an address bound to an account is M_THREEPID_IN_USE; resetting the
        # password of an address bound to none may be M_THREEPID_NOT_FOUND. Unless the config
        # hides it: a session is made as always, but nothing is sent and it never validates.
        inhibit = False
        if purpose == PURPOSE_ADD and owner is not None:
            if not self._email.inhibit_threepid_errors:
                raise MatrixError(
                    Codes.THREEPID_IN_USE, "This e-mail address is already bound to an account"
                )
            inhibit = True
        elif purpose == PURPOSE_PASSWORD_RESET and owner is None:
            if not self._email.inhibit_threepid_errors:
                raise MatrixError(Codes.THREEPID_NOT_FOUND, "No account has this e-mail address")
            inhibit = True
        now = self._clock.now_ms()
        lifetime = self._email.validation_token_lifetime_ms
        await self._store.delete_expired(now - EXPIRED_KEPT_MS)
        session = await self._store.get_or_create_session(
            ValidationSession(
                session_id=secrets.token_urlsafe(18),
                purpose=purpose,
                medium=MEDIUM_EMAIL,
                address=address,
                client_secret=req.client_secret,
                last_send_attempt=-1,
                next_link=req.next_link,
                created_ts=now,
                validated_ts=None,
                expires_ts=now + lifetime,
            )
        )
        out = RequestedToken(session.session_id, self._submit_url)
        if req.send_attempt <= session.last_send_attempt:
            return out  # spec: a retry of this attempt; its mail went out already
        await self._ratelimiter.check(Action.THREEPID_VALIDATION, f"email:{address}")
        token = None if inhibit else secrets.token_urlsafe(24)
        token_hash = _token_hash(token) if token is not None else None
        # The attempt is recorded before the mail goes out, so that concurrent retries send
        # one mail; if sending fails it is taken back and the client can retry it.
        if not await self._store.record_send(
            session.session_id,
            req.send_attempt,
            req.next_link,
            token_hash,
            now + lifetime,
            now + lifetime,
        ):
            return out
        if token is None:
            return out
        link = f"{self._submit_url}?" + urlencode(
            {"sid": session.session_id, "client_secret": req.client_secret, "token": token}
        )
        mail = self._mailer.validation(address, purpose, link, token, lifetime)
        try:
            await self._mailer.send(mail)
        except Exception as e:
            await self._store.undo_send(
                session.session_id, req.send_attempt, session.last_send_attempt, _token_hash(token)
            )
            logger.warning("validation mail not sent", extra={"error": repr(e)})
            raise MatrixError(
                Codes.EMAIL_SEND_ERROR, "The e-mail could not be sent; try again later"
            ) from e
        logger.info("validation mail sent", extra={"purpose": purpose})
        return out

    def _check_next_link(self, next_link: str | None) -> None:
        if next_link is None:
            return
        parts = urlsplit(next_link)
        if (
            len(next_link) > MAX_NEXT_LINK_CHARS
            or parts.scheme not in ("http", "https")
            or not parts.hostname
        ):
            raise MatrixError(Codes.INVALID_PARAM, "next_link must be an http(s) URL")
        allowed = self._email.next_link_hosts
        if allowed is not None and parts.hostname.lower() not in {h.lower() for h in allowed}:
            raise MatrixError(Codes.INVALID_PARAM, "next_link may not lead to this host")

    # --- the submit_url ----------------------------------------------------------------------

    async def submit_token(
        self, sid: str, client_secret: str, token: str, *, validate: bool = True
    ) -> Validated:
        """The mailed token (by the link, or as a client submits it): validates the session.
        ``validate`` False only checks it (a page that asks to confirm first)."""
        session = await self._store.get_session(sid)
        if session is None or not hmac.compare_digest(
            session.client_secret.encode(), client_secret.encode()
        ):
            raise MatrixError(
                Codes.INVALID_PARAM,
                "Unknown validation session: the link may have been used already",
            )
        now = self._clock.now_ms()
        if session.expires_ts <= now:
            raise MatrixError(
                Codes.SESSION_EXPIRED, "This validation session has expired; ask for a new mail"
            )
        token_expires = await self._store.get_token_expiry(sid, _token_hash(token))
        if token_expires is None:
            raise MatrixError(Codes.TOKEN_INCORRECT, "The token is incorrect")
        if token_expires <= now and session.validated_ts is None:
            raise MatrixError(Codes.SESSION_EXPIRED, "This link has expired; ask for a new mail")
        if validate and session.validated_ts is None:
            await self._store.mark_validated(
                sid, now, now + self._email.validation_token_lifetime_ms
            )
            logger.info("e-mail address validated", extra={"purpose": session.purpose})
        return Validated(
            session.purpose, session.next_link, validate or session.validated_ts is not None
        )

    async def open_link(self, sid: str, client_secret: str, token: str) -> Validated:
        """A GET of the mailed link. Adding an address is validated at once; a password
        reset only once the page is confirmed (a POST): mail scanners open links, and one
        must not validate a reset that someone else asked for."""
        checked = await self.submit_token(sid, client_secret, token, validate=False)
        if checked.purpose != PURPOSE_ADD:
            return checked
        return await self.submit_token(sid, client_secret, token)

    async def validated_session(
        self, sid: str, client_secret: str, purpose: str, not_validated: Codes
    ) -> ValidationSession:
        """The validated session these credentials name, for ``purpose``; else an error
        (``not_validated`` when it is only waiting for its link to be opened)."""
        session = await self._store.get_session(sid)
        if (
            session is None
            or session.purpose != purpose
            or not hmac.compare_digest(session.client_secret.encode(), client_secret.encode())
        ):
            raise MatrixError(Codes.THREEPID_AUTH_FAILED, "No such validation session")
        if session.expires_ts <= self._clock.now_ms():
            raise MatrixError(
                Codes.THREEPID_AUTH_FAILED, "The validation session has expired; ask for a new mail"
            )
        if session.validated_ts is None:
            raise MatrixError(
                not_validated,
                "The e-mail address has not been validated yet: open the link in the mail first",
            )
        return session

    # --- m.login.email.identity (uia.EmailIdentity) ----------------------------------------

    async def password_reset_owner(self, sid: str, client_secret: str) -> UserID:
        """Whose password a validated password-reset session may change."""
        session = await self.validated_session(
            sid, client_secret, PURPOSE_PASSWORD_RESET, Codes.UNAUTHORIZED
        )
        owner = await self._store.get_owner(session.medium, session.address)
        if owner is None:
            raise MatrixError(Codes.THREEPID_NOT_FOUND, "No account has this e-mail address")
        return UserID(owner)

    async def use_session(self, sid: str) -> None:
        await self._store.delete_session(sid)

    async def owner_of(self, medium: str, address: str) -> UserID | None:
        """The account a third-party identifier is bound to (login, the password stage)."""
        if medium != MEDIUM_EMAIL:
            return None
        canonical = canonical_email(address)
        if canonical is None:
            return None
        owner = await self._store.get_owner(MEDIUM_EMAIL, canonical)
        return UserID(owner) if owner is not None else None
