"""Third-party identifiers bound to accounts, and the validation sessions that bind them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import threepid_sessions, threepid_tokens, user_threepids


@dataclass(frozen=True, slots=True)
class Threepid:
    user_id: str
    medium: str
    address: str
    validated_at: int
    added_at: int


@dataclass(frozen=True, slots=True)
class ValidationSession:
    session_id: str
    purpose: str
    medium: str
    address: str
    client_secret: str
    last_send_attempt: int
    next_link: str | None
    created_ts: int
    validated_ts: int | None
    expires_ts: int


def _threepid(r: Any) -> Threepid:
    return Threepid(r.user_id, r.medium, r.address, int(r.validated_at), int(r.added_at))


def _session(r: Any) -> ValidationSession:
    return ValidationSession(
        r.session_id,
        r.purpose,
        r.medium,
        r.address,
        r.client_secret,
        int(r.last_send_attempt),
        r.next_link,
        int(r.created_ts),
        int(r.validated_ts) if r.validated_ts is not None else None,
        int(r.expires_ts),
    )


def _delete_session(session_id: str) -> tuple[sa.Delete, sa.Delete]:
    """A session's tokens, then the session."""
    return (
        sa.delete(threepid_tokens).where(threepid_tokens.c.session_id == session_id),
        sa.delete(threepid_sessions).where(threepid_sessions.c.session_id == session_id),
    )


class ThreepidStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- bound identifiers -----------------------------------------------------------------

    async def get_threepids(self, user_id: str) -> list[Threepid]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(user_threepids)
                    .where(user_threepids.c.user_id == user_id)
                    .order_by(user_threepids.c.added_at, user_threepids.c.address)
                )
            ).all()
        return [_threepid(r) for r in rows]

    async def get_owner(self, medium: str, address: str) -> str | None:
        async with self._db.read() as conn:
            owner = (
                await conn.execute(
                    sa.select(user_threepids.c.user_id).where(
                        user_threepids.c.medium == medium, user_threepids.c.address == address
                    )
                )
            ).scalar()
        return str(owner) if owner is not None else None

    async def add_threepid(
        self,
        user_id: str,
        medium: str,
        address: str,
        *,
        validated_at: int,
        added_at: int,
        session_id: str,
    ) -> str:
        """Bind the address to the user and use the session up, in one transaction. Returns
        the owner afterwards: ``user_id``, or whoever had it first."""
        async with self._db.write() as conn:
            await conn.execute(
                self._db.insert_ignore(
                    user_threepids,
                    {
                        "medium": medium,
                        "address": address,
                        "user_id": user_id,
                        "validated_at": validated_at,
                        "added_at": added_at,
                    },
                    keys=("medium", "address"),
                )
            )
            owner = (
                await conn.execute(
                    sa.select(user_threepids.c.user_id).where(
                        user_threepids.c.medium == medium, user_threepids.c.address == address
                    )
                )
            ).scalar_one()
            if owner == user_id:
                for statement in _delete_session(session_id):
                    await conn.execute(statement)
        return str(owner)

    async def delete_threepid(self, user_id: str, medium: str, address: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.delete(user_threepids).where(
                    user_threepids.c.user_id == user_id,
                    user_threepids.c.medium == medium,
                    user_threepids.c.address == address,
                )
            )
        return bool(result.rowcount)

    async def delete_user_threepids(self, user_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(sa.delete(user_threepids).where(user_threepids.c.user_id == user_id))

    # --- validation sessions ---------------------------------------------------------------

    async def get_session(self, session_id: str) -> ValidationSession | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(threepid_sessions).where(threepid_sessions.c.session_id == session_id)
                )
            ).first()
        return _session(r) if r is not None else None

    async def get_or_create_session(self, session: ValidationSession) -> ValidationSession:
        """The session of the same client secret, address and purpose if there is one (a
        retry, or a new send attempt); else ``session``, now stored."""
        s = threepid_sessions.c
        async with self._db.write() as conn:
            await conn.execute(
                self._db.insert_ignore(
                    threepid_sessions,
                    {
                        "session_id": session.session_id,
                        "purpose": session.purpose,
                        "medium": session.medium,
                        "address": session.address,
                        "client_secret": session.client_secret,
                        "last_send_attempt": session.last_send_attempt,
                        "next_link": session.next_link,
                        "created_ts": session.created_ts,
                        "validated_ts": None,
                        "expires_ts": session.expires_ts,
                    },
                    keys=("client_secret", "medium", "address", "purpose"),
                )
            )
            r = (
                await conn.execute(
                    sa.select(threepid_sessions).where(
                        s.client_secret == session.client_secret,
                        s.medium == session.medium,
                        s.address == session.address,
                        s.purpose == session.purpose,
                    )
                )
            ).one()
        return _session(r)

    async def record_send(
        self,
        session_id: str,
        send_attempt: int,
        next_link: str | None,
        token_hash: bytes | None,
        token_expires_ts: int,
        session_expires_ts: int,
    ) -> bool:
        """A mail went out (or, ``token_hash`` None, was deliberately not sent) for this send
        attempt: remember it, with its token. False if a concurrent request recorded this or a
        later attempt first (its mail is then the one that counts)."""
        s = threepid_sessions.c
        # A validated session may already live longer than the new token.
        later = sa.case((s.expires_ts > session_expires_ts, s.expires_ts), else_=session_expires_ts)
        async with self._db.write() as conn:
            moved = await conn.execute(
                sa.update(threepid_sessions)
                .where(s.session_id == session_id, s.last_send_attempt < send_attempt)
                .values(last_send_attempt=send_attempt, next_link=next_link, expires_ts=later)
            )
            if not moved.rowcount:
                return False
            if token_hash is not None:
                await conn.execute(
                    sa.insert(threepid_tokens).values(
                        token_hash=token_hash, session_id=session_id, expires_ts=token_expires_ts
                    )
                )
        return True

    async def undo_send(
        self, session_id: str, send_attempt: int, previous_attempt: int, token_hash: bytes
    ) -> None:
        """The mail of ``send_attempt`` could not be sent: forget its token and the attempt
        (unless a later one was recorded meanwhile), so that the client can retry it."""
        s = threepid_sessions.c
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(threepid_tokens).where(threepid_tokens.c.token_hash == token_hash)
            )
            await conn.execute(
                sa.update(threepid_sessions)
                .where(s.session_id == session_id, s.last_send_attempt == send_attempt)
                .values(last_send_attempt=previous_attempt)
            )

    async def get_token_expiry(self, session_id: str, token_hash: bytes) -> int | None:
        """When this session's token expires; None if it is not one of its tokens."""
        async with self._db.read() as conn:
            value = (
                await conn.execute(
                    sa.select(threepid_tokens.c.expires_ts).where(
                        threepid_tokens.c.token_hash == token_hash,
                        threepid_tokens.c.session_id == session_id,
                    )
                )
            ).scalar()
        return int(value) if value is not None else None

    async def mark_validated(self, session_id: str, now: int, expires_ts: int) -> None:
        """The first validation counts; the session then lives until ``expires_ts``."""
        s = threepid_sessions.c
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(threepid_sessions)
                .where(s.session_id == session_id, s.validated_ts.is_(None))
                .values(validated_ts=now, expires_ts=expires_ts)
            )

    async def delete_session(self, session_id: str) -> bool:
        """Use the session up; False if it was gone already (used by a concurrent request)."""
        tokens, session = _delete_session(session_id)
        async with self._db.write() as conn:
            await conn.execute(tokens)
            result = await conn.execute(session)
        return bool(result.rowcount)

    async def delete_expired(self, before: int) -> None:
        """Forget the sessions (and their tokens) that expired before ``before``."""
        expired = sa.select(threepid_sessions.c.session_id).where(
            threepid_sessions.c.expires_ts < before
        )
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(threepid_tokens).where(threepid_tokens.c.session_id.in_(expired))
            )
            await conn.execute(
                sa.delete(threepid_sessions).where(threepid_sessions.c.expires_ts < before)
            )
