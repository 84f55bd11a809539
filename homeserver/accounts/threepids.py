"""E-mail addresses on accounts (spec: "Adding Account Administrative Contact Information").

An address is bound once its validation session (``email_validation``) is validated and the
user has authenticated again (UIA).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from homeserver.accounts.email_validation import (
    MEDIUM_EMAIL,
    PURPOSE_ADD,
    EmailValidation,
    canonical_email,
)
from homeserver.accounts.uia import LOGIN_PASSWORD, AuthChallenge, UiaService
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.pushers import PusherStore
from homeserver.storage.threepids import ThreepidStore

logger = logging.getLogger(__name__)

MEDIA = ("email", "msisdn")  # spec: the media of /account/3pid
ADD_FLOWS: list[list[str]] = [[LOGIN_PASSWORD]]


def threepid_json(medium: str, address: str, validated_at: int, added_at: int) -> JsonDict:
    return {
        "medium": medium,
        "address": address,
        "validated_at": validated_at,
        "added_at": added_at,
    }


class ThreepidService:
    def __init__(
        self,
        store: ThreepidStore,
        pushers: PusherStore,
        validation: EmailValidation,
        uia: UiaService,
        clock: Clock,
    ) -> None:
        self._store = store
        self._pushers = pushers
        self._validation = validation
        self._uia = uia
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._validation.enabled

    # --- /account/3pid -----------------------------------------------------------------------

    async def get_threepids(self, requester: Requester) -> list[JsonDict]:
        """GET /account/3pid"""
        return [
            threepid_json(t.medium, t.address, t.validated_at, t.added_at)
            for t in await self._store.get_threepids(requester.user_id)
        ]

    async def add_threepid(
        self,
        requester: Requester,
        sid: str,
        client_secret: str,
        auth: JsonDict | None,
        fingerprint: str,
    ) -> AuthChallenge | None:
        """POST /account/3pid/add: the session is checked before and after authentication
        (before: no password asked for a request that cannot succeed)."""
        if not self.enabled:
            raise MatrixError(
                Codes.THREEPID_MEDIUM_NOT_SUPPORTED, "This server does not send e-mail"
            )
        await self._validation.validated_session(
            sid, client_secret, PURPOSE_ADD, Codes.THREEPID_AUTH_FAILED
        )
        result = await self._uia.authenticate(
            auth, ADD_FLOWS, fingerprint, requester=requester.user_id
        )
        if isinstance(result, AuthChallenge):
            return result
        session = await self._validation.validated_session(
            sid, client_secret, PURPOSE_ADD, Codes.THREEPID_AUTH_FAILED
        )
        now = self._clock.now_ms()
        assert session.validated_ts is not None
        owner = await self._store.add_threepid(
            requester.user_id,
            session.medium,
            session.address,
            validated_at=session.validated_ts,
            added_at=now,
            session_id=sid,
        )
        if owner != requester.user_id:
            # spec: homeservers should not let two accounts have one address.
            raise MatrixError(
                Codes.THREEPID_IN_USE, "This e-mail address is already bound to an account"
            )
        await self._uia.finish(result)
        logger.info("e-mail address added", extra={"user_id": requester.user_id})
        return None

    async def delete_threepid(self, requester: Requester, medium: str, address: str) -> None:
        """POST /account/3pid/delete: also removes the account's e-mail pushers that mail
        this address. Deleting what is not there is a no-op (a retried request succeeds)."""
        if medium not in MEDIA:
            raise MatrixError(Codes.INVALID_PARAM, "medium must be email or msisdn")
        if medium != MEDIUM_EMAIL:
            return  # no phone number is ever bound here
        canonical = canonical_email(address)
        if canonical is None:
            return
        await self._store.delete_threepid(requester.user_id, medium, canonical)
        await self.delete_email_pushers(requester.user_id, [canonical])

    async def delete_email_pushers(self, user_id: str, addresses: Sequence[str]) -> None:
        gone = [
            p.id
            for p in await self._pushers.get_pushers(user_id)
            if p.kind == MEDIUM_EMAIL and canonical_email(p.pushkey) in addresses
        ]
        if gone:
            await self._pushers.delete_pushers_by_id(gone)

    async def deactivate_user(self, user_id: UserID) -> None:
        """A deactivated account lets go of its addresses (another may bind them)."""
        await self._store.delete_user_threepids(user_id)
