"""Single sign-on: sessions in progress, links of provider subjects, login tokens."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from homeserver.core.types import JsonDict
from homeserver.storage.database import Database
from homeserver.storage.schema import login_tokens, sso_links, sso_sessions

_s = sso_sessions
_l = sso_links
_t = login_tokens


@dataclass(frozen=True, slots=True)
class SsoSession:
    provider: str
    state: str
    nonce: str
    code_verifier: str
    redirect_url: str
    claims: JsonDict | None
    expires_ts: int


class SsoStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_session(self, session_hash: bytes, session: SsoSession) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(_s).where(_s.c.expires_ts <= session.expires_ts - 86_400_000)
            )
            await conn.execute(
                sa.insert(_s).values(
                    session_hash=session_hash,
                    provider=session.provider,
                    state=session.state,
                    nonce=session.nonce,
                    code_verifier=session.code_verifier,
                    redirect_url=session.redirect_url,
                    claims=None,
                    expires_ts=session.expires_ts,
                )
            )

    async def get_session(self, session_hash: bytes) -> SsoSession | None:
        async with self._db.read() as conn:
            r = (await conn.execute(sa.select(_s).where(_s.c.session_hash == session_hash))).first()
        if r is None:
            return None
        return SsoSession(
            r.provider,
            r.state,
            r.nonce,
            r.code_verifier,
            r.redirect_url,
            None if r.claims is None else orjson.loads(r.claims),
            int(r.expires_ts),
        )

    async def set_claims(self, session_hash: bytes, claims: JsonDict) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(_s)
                .where(_s.c.session_hash == session_hash)
                .values(claims=orjson.dumps(claims).decode(), state="")
            )

    async def delete_session(self, session_hash: bytes) -> None:
        async with self._db.write() as conn:
            await conn.execute(sa.delete(_s).where(_s.c.session_hash == session_hash))

    async def linked_user(self, provider: str, subject: str) -> str | None:
        async with self._db.read() as conn:
            value: str | None = (
                await conn.execute(
                    sa.select(_l.c.user_id).where(
                        _l.c.provider == provider, _l.c.subject == subject
                    )
                )
            ).scalar_one_or_none()
        return value

    async def providers_of_user(self, user_id: str) -> list[str]:
        """The providers an account has an identity linked at."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                sa.select(_l.c.provider).where(_l.c.user_id == user_id).distinct()
            )
            return [str(r.provider) for r in rows.all()]

    async def link(self, provider: str, subject: str, user_id: str) -> bool:
        """False when the subject is linked already (to whichever account)."""
        async with self._db.write() as conn:
            result = await conn.execute(
                self._db.insert_ignore_statement(_l, ("provider", "subject")),
                {"provider": provider, "subject": subject, "user_id": user_id},
            )
        return bool(result.rowcount)

    async def add_login_token(self, token_hash: bytes, user_id: str, expires_ts: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(sa.delete(_t).where(_t.c.valid_until_ms <= expires_ts - 86_400_000))
            await conn.execute(
                sa.insert(_t).values(
                    token_hash=token_hash, user_id=user_id, valid_until_ms=expires_ts
                )
            )

    async def take_login_token(self, token_hash: bytes, now: int) -> str | None:
        """The token's user if it is known and not expired; it is gone either way."""
        async with self._db.write() as conn:
            r = (
                await conn.execute(sa.delete(_t).where(_t.c.token_hash == token_hash).returning(_t))
            ).first()
        if r is None or int(r.valid_until_ms) <= now:
            return None
        return str(r.user_id)
