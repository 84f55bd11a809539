"""Missed-message e-mails: one digest per pusher, its events grouped by room.

Sent with aiosmtplib to the configured SMTP server. Bodies are plain text and HTML (every
value from an event is escaped); the unsubscribe link removes the e-mail pusher.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

import aiosmtplib

from homeserver.config import EmailConfig

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
    return text if len(text) <= MAX_BODY_CHARS else text[:MAX_BODY_CHARS - 1] + "…"


class Mailer:
    def __init__(self, config: EmailConfig) -> None:
        self._config = config

    def room_link(self, room_id: str) -> str | None:
        base = self._config.client_url
        return f"{base.rstrip('/')}/#/room/{room_id}" if base else None

    def missed_messages(self, to: str, user_name: str, rooms: list[MailedRoom],
                        unsubscribe_url: str) -> EmailMessage:
        app = self._config.app_name
        count = sum(len(r.events) for r in rooms)
        if len(rooms) == 1:
            subject = f"[{app}] {count} unread in {rooms[0].name}"
        else:
            subject = f"[{app}] {count} unread in {len(rooms)} rooms"
        lines = [f"Hello {user_name},", "",
                 f"You have unread messages on {app}:", ""]
        parts = [f"<p>Hello {html.escape(user_name)},</p>",
                 f"<p>You have unread messages on {html.escape(app)}:</p>"]
        for room in rooms:
            link = self.room_link(room.room_id)
            lines.append(f"{room.name}" + (f" ({link})" if link else ""))
            title = html.escape(room.name)
            if link:
                title = f'<a href="{html.escape(link, quote=True)}">{title}</a>'
            parts.append(f"<h3>{title}</h3><ul>")
            for e in room.events:
                lines.append(f"  {e.sender}: {_excerpt(e.text)}")
                parts.append(f"<li><b>{html.escape(e.sender)}</b>: "
                             f"{html.escape(_excerpt(e.text))}</li>")
            parts.append("</ul>")
            lines.append("")
        lines += ["--", f"Unsubscribe from these mails: {unsubscribe_url}"]
        parts.append(f'<p><small><a href="{html.escape(unsubscribe_url, quote=True)}">'
                     f"Unsubscribe from these mails</a></small></p>")
        msg = EmailMessage()
        msg["From"] = self._config.from_address
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        domain = parseaddr(self._config.from_address)[1].partition("@")[2] or None
        msg["Message-ID"] = make_msgid(domain=domain)
        # RFC 2369 and RFC 8058: mail clients offer a one-click unsubscribe (a POST).
        msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content("\n".join(lines))
        msg.add_alternative("<html><body>" + "".join(parts) + "</body></html>",
                            subtype="html")
        return msg

    async def send(self, message: EmailMessage) -> None:
        c = self._config
        await aiosmtplib.send(
            message, hostname=c.smtp_host, port=c.smtp_port, username=c.smtp_username,
            password=c.smtp_password, use_tls=c.smtp_security == "tls",
            start_tls=True if c.smtp_security == "starttls" else False,
            timeout=SMTP_TIMEOUT_S)
