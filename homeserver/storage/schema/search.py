"""Full-text search of events: kept outside ``metadata``, written by migration 0019.

PostgreSQL: an expression index on ``events`` (``ix_events_search``). SQLite: an FTS5
table, ``event_search``, with the shadow tables FTS5 makes for it, kept by triggers on
``events``. Neither can be declared as a Core table, so comparing the migrated schema with
``metadata`` leaves them out (``include_name``, used by migrations/env.py and the test).
"""

from __future__ import annotations

EVENT_SEARCH = "event_search"
EVENT_SEARCH_INDEX = "ix_events_search"


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name``: False for the search objects that are not in metadata."""
    if name is None:
        return True
    if type_ == "table":
        return name != EVENT_SEARCH and not name.startswith(EVENT_SEARCH + "_")
    if type_ == "index":
        return name != EVENT_SEARCH_INDEX
    return True
