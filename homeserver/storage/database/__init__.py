"""The database: ``Database`` (transactions, reads, stream positions), ``prepared``
statements, and the ``Connection`` storage code executes on; see ``handle``."""

from homeserver.storage.database.handle import Database
from homeserver.storage.database.postgresql import PgConnection
from homeserver.storage.database.prepared import (
    Connection,
    LeanResult,
    LeanRow,
    Params,
    prepared,
)
from homeserver.storage.database.sqlite import SqliteConnection

__all__ = [
    "Connection",
    "Database",
    "LeanResult",
    "LeanRow",
    "Params",
    "PgConnection",
    "SqliteConnection",
    "prepared",
]
