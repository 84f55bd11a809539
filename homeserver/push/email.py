"""The server's e-mails, sent with aiosmtplib to the configured SMTP server.

Missed-message digests (one per e-mail pusher, its events grouped by room; the unsubscribe
link removes the pusher) and validation mails (a link and token that prove the reader owns
the address: adding it to an account, resetting a password). Bodies are plain text and HTML,
every value from a user or an event escaped.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from homeserver.core.config import EmailConfig

logger = logging.getLogger(__name__)

SMTP_TIMEOUT_S = 30
MAX_BODY_CHARS = 300  # of one event's text in a mail


@dataclass(frozen=True, slots=True)
class MailedEvent:
    sender: str  # display name, or user ID
    text: str
    ts: int


@dataclass(frozen=True, slots=True)
class MailedRoom:
    room_id: str
    name: str
    events: tuple[MailedEvent, ...]


def _excerpt(text: str) -> str:
    return text if len(text) <= MAX_BODY_CHARS else text[: MAX_BODY_CHARS - 1] + "…"


class Mailer:
    def __init__(self, config: EmailConfig) -> None:
        self._config = config

    def room_link(self, room_id: str) -> str | None:
        base = self._config.client_url
        return f"{base.rstrip('/')}/#/room/{room_id}" if base else None

    def missed_messages(
        self, to: str, user_name: str, rooms: list[MailedRoom], unsubscribe_url: str
    ) -> EmailMessage:
        app = self._config.app_name
        count = sum(len(r.events) for r in rooms)
        if len(rooms) == 1:
            subject = f"[{app}] {count} unread in {rooms[0].name}"
        else:
            subject = f"[{app}] {count} unread in {len(rooms)} rooms"
        lines = [f"Hello {user_name},", "", f"You have unread messages on {app}:", ""]
        parts = [
            f"<p>Hello {html.escape(user_name)},</p>",
            f"<p>You have unread messages on {html.escape(app)}:</p>",
        ]
        for room in rooms:
            link = self.room_link(room.room_id)
            lines.append(f"{room.name}" + (f" ({link})" if link else ""))
            title = html.escape(room.name)
            if link:
                title = f'<a href="{html.escape(link, quote=True)}">{title}</a>'
            parts.append(f"<h3>{title}</h3><ul>")
            for e in room.events:
                lines.append(f"  {e.sender}: {_excerpt(e.text)}")
                parts.append(
                    f"<li><b>{html.escape(e.sender)}</b>: {html.escape(_excerpt(e.text))}</li>"
                )
            parts.append("</ul>")
            lines.append("")
        lines += ["--", f"Unsubscribe from these mails: {unsubscribe_url}"]
        parts.append(
            f'<p><small><a href="{html.escape(unsubscribe_url, quote=True)}">'
            f"Unsubscribe from these mails</a></small></p>"
        )
        msg = self._message(to, subject)
        # RFC 2369 and RFC 8058: mail clients offer a one-click unsubscribe (a POST).
        msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content("\n".join(lines))
        msg.add_alternative("<html><body>" + "".join(parts) + "</body></html>", subtype="html")
        return msg

    def validation(
        self, to: str, purpose: str, link: str, token: str, lifetime_ms: int
    ) -> EmailMessage:
        """The mail that validates an address: ``purpose`` is ``add`` (to an account) or
        ``password_reset``. The link validates the session; the token is the same proof, for
        a client that asks its user to type it."""
        app = self._config.app_name
        minutes = max(1, lifetime_ms // 60_000)
        if purpose == "password_reset":
            subject = f"[{app}] Password reset"
            intro = (
                f"Someone asked to reset the password of the {app} account with this "
                "e-mail address. To go on, open this link and confirm:"
            )
            outro = (
                "If it was not you, ignore this mail: nothing changes unless the link "
                "is opened and confirmed."
            )
        else:
            subject = f"[{app}] Confirm your e-mail address"
            intro = (
                f"Someone asked to add this e-mail address to a {app} account. If it was "
                "you, open this link to confirm:"
            )
            outro = "If it was not you, ignore this mail: the address will not be added."
        expiry = f"The link works for {minutes} minutes. Or enter this code: {token}"
        msg = self._message(to, subject)
        msg.set_content("\n".join(["Hello,", "", intro, "", link, "", expiry, "", outro]))
        quoted = html.escape(link, quote=True)
        msg.add_alternative(
            f"<html><body><p>Hello,</p><p>{html.escape(intro)}</p>"
            f'<p><a href="{quoted}">{html.escape(link)}</a></p>'
            f"<p>{html.escape(expiry)}</p><p>{html.escape(outro)}</p></body></html>",
            subtype="html",
        )
        return msg

    def _message(self, to: str, subject: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self._config.from_address
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        domain = parseaddr(self._config.from_address)[1].partition("@")[2] or None
        msg["Message-ID"] = make_msgid(domain=domain)
        return msg

    async def send(self, message: EmailMessage) -> None:
        import aiosmtplib  # at the first e-mail: most servers send none

        c = self._config
        await aiosmtplib.send(
            message,
            hostname=c.smtp_host,
            port=c.smtp_port,
            username=c.smtp_username,
            password=c.smtp_password,
            use_tls=c.smtp_security == "tls",
            start_tls=True if c.smtp_security == "starttls" else False,
            timeout=SMTP_TIMEOUT_S,
        )
