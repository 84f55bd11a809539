"""Runs our server with every SQL statement appended to a file: ``python -m bench.querylog
LOG [homeserver args]``. For counting database round trips; the server code is unchanged.

Statements are taken from the drivers, not from SQLAlchemy, since prepared statements
bypass SQLAlchemy's execution (homeserver/storage/database/): SQLite's trace callback
(which also sees BEGIN, COMMIT and the savepoints of group commit) and asyncpg's query
logger.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


def main() -> None:
    log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def statement(sql: str) -> None:
        line = " ".join(sql.split()).rstrip(";")
        log.write(line[:160] + "\n")

    @event.listens_for(Engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        driver = getattr(dbapi_conn, "driver_connection", None)
        if hasattr(dbapi_conn, "set_trace_callback"):  # sqlite3
            dbapi_conn.set_trace_callback(statement)
        elif hasattr(driver, "add_query_logger"):  # asyncpg, behind SQLAlchemy's adapter
            driver.add_query_logger(lambda query: statement(query.query))
        # (aiosqlite only runs the migrations at start-up.)

    sys.argv = ["homeserver", *sys.argv[2:]]
    runpy.run_module("homeserver", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
