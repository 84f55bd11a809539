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
from homeserver.core.streams import Stream
from homeserver.storage.account_data import AccountDataStore
from homeserver.wakeups.bus import Bus, Wakeup

MAX_CACHED_USERS = 50_000


class IgnoreLists:
    def __init__(self, store: AccountDataStore, bus: Bus) -> None:
        self._store = store
        self._lists: LRUCache[str, frozenset[str]] = LRUCache(maxsize=MAX_CACHED_USERS)
        bus.subscribe(self._on_wakeup)

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        if wakeup.stream == Stream.ACCOUNT_DATA:
            for user_id in wakeup.user_ids:
                self._lists.pop(user_id, None)

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
            stored = await self._store.get_global_for_users(missing, IGNORED_USER_LIST)
            for user_id in missing:
                ignored = parse_ignored_users(stored.get(user_id))
                self._lists[user_id] = out[user_id] = ignored if ignored else NOBODY
        return out
