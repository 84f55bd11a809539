"""The user directory (spec: POST /user_directory/search).

Who may be found: users who share a room with the searcher, and users joined to rooms with a
``public`` join rule or ``world_readable`` history visibility, the minimum the spec asks for.
A user in no such room is never found, whatever the search term.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.core.types import Requester
from homeserver.storage.user_directory import DirectoryUser, UserDirectoryStore

DEFAULT_LIMIT = 10  # spec
MAX_LIMIT = 100  # ours: a search is a query over memberships; clients ask for 10 to 50
MAX_WORDS = 8  # ours: each word is one more LIKE condition
MAX_TERM_CHARS = 256


@dataclass(frozen=True, slots=True)
class DirectorySearch:
    results: list[DirectoryUser]
    limited: bool


class UserDirectoryService:
    def __init__(self, store: UserDirectoryStore) -> None:
        self._store = store

    async def search(
        self, requester: Requester, search_term: str, limit: int = DEFAULT_LIMIT
    ) -> DirectorySearch:
        """Case-insensitive: every word of the term is in the user ID or the display name."""
        words = search_term[:MAX_TERM_CHARS].lower().split()[:MAX_WORDS]
        limit = min(limit, MAX_LIMIT)
        if not words or limit <= 0:
            return DirectorySearch([], limited=bool(words))
        found = await self._store.search(requester.user_id, words, limit + 1)
        return DirectorySearch(found[:limit], limited=len(found) > limit)
