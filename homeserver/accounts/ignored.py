"""Who ignores whom (``m.ignored_user_list``), as notifications need it.

spec, "Ignoring Users": events from ignored users are not sent to the user, so they must not
notify them either. An ignored sender's event gets no push action for the users who ignore
them (no count, no /notifications entry, no push), and counts skip the push actions their
earlier events made. The lists are read for every member of a room on the send path, so each
user's is cached, and dropped on every worker when their account data changes (the bus's
account-data wake-up), as compiled push rules are.
"""

from __future__ import annotations

from collections.abc import Collection

from cachetools import LRUCache

from homeserver.accounts.account_data import IGNORED_USER_LIST, NOBODY, parse_ignored_users
from homeserver.caches.invalidations import IGNORED_USERS, CacheInvalidations
from homeserver.core.streams import Stream
from homeserver.storage.account_data import AccountDataStore
from homeserver.wakeups.bus import Bus, Wakeup

MAX_CACHED_USERS = 50_000


class IgnoreLists:
    def __init__(
        self, store: AccountDataStore, bus: Bus, invalidations: CacheInvalidations | None = None
    ) -> None:
        self._store = store
        self._lists: LRUCache[str, frozenset[str]] = LRUCache(maxsize=MAX_CACHED_USERS)
        self._invalidations = invalidations
        bus.subscribe(self._on_wakeup)
        if invalidations is not None:
            # The wake-up is the fast path; the stream makes sure (a wake-up may be lost).
            invalidations.register(
                IGNORED_USERS, lambda user_id: self._lists.pop(user_id, None), self._lists.clear
            )

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        if wakeup.stream == Stream.ACCOUNT_DATA:
            for user_id in wakeup.user_ids:
                self._lists.pop(user_id, None)

    def _generation(self) -> int:
        inv = self._invalidations
        return 0 if inv is None else inv.generation(IGNORED_USERS)

    async def ignored_users(self, user_id: str) -> frozenset[str]:
        """Whom ``user_id`` ignores."""
        return (await self._get([user_id]))[user_id]

    async def ignoring(self, sender: str, user_ids: Collection[str]) -> set[str]:
        """Which of ``user_ids`` ignore ``sender``."""
        lists = await self._get(user_ids)
        return {u for u in user_ids if sender in lists[u]}

    async def _get(self, user_ids: Collection[str]) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {}
        missing = []
        for user_id in user_ids:
            found = self._lists.get(user_id)
            if found is None:
                missing.append(user_id)
            else:
                out[user_id] = found
        if missing:
            generation = self._generation()
            stored = await self._store.get_global_for_users(missing, IGNORED_USER_LIST)
            keep = self._generation() == generation  # else a list read may predate a drop
            for user_id in missing:
                ignored = parse_ignored_users(stored.get(user_id))
                out[user_id] = ignored if ignored else NOBODY
                if keep:
                    self._lists[user_id] = out[user_id]
        return out
