"""Runs our server with every SQL statement appended to a file: ``python -m bench.querylog
LOG [homeserver args]``. For counting database round trips; the server code is unchanged."""

from __future__ import annotations

import runpy
import sys
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


def main() -> None:
    log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - open for the process's life

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        log.write(" ".join(statement.split())[:160] + "\n")

    @event.listens_for(Engine, "commit")
    def _commit(conn: Any) -> None:
        log.write("COMMIT\n")

    sys.argv = ["homeserver", *sys.argv[2:]]
    runpy.run_module("homeserver", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
