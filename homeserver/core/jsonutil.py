"""JSON encoding and decoding: orjson on the hot path, canonical JSON where signing needs it."""

from __future__ import annotations

from typing import Any

import orjson

from homeserver.core.json_limits import MAX_SAFE_INT, check_json_limits

__all__ = ["MAX_SAFE_INT", "check_json_numbers", "dumps", "dumps_str", "loads"]


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def dumps_str(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def check_json_numbers(value: Any, path: str = "") -> None:
    """Refuse floats, integers outside the canonical JSON range and JSON nested past
    ``MAX_JSON_DEPTH`` in client-supplied data that becomes canonical JSON (events, keys)."""
    check_json_limits(value, path, allow_floats=False)
