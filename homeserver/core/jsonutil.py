"""JSON encoding and decoding: orjson on the hot path, canonical JSON where signing needs it."""

from __future__ import annotations

from typing import Any

import orjson

from homeserver.core.errors import Codes, MatrixError

# spec, appendices "Canonical JSON": integers must be in [-(2**53)+1, (2**53)-1].
MAX_SAFE_INT = 2**53 - 1


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def dumps_str(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def check_json_numbers(value: Any, path: str = "") -> None:
    """Refuse floats and integers outside the canonical JSON range in client-supplied data."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                raise MatrixError(Codes.BAD_JSON, f"Integer out of range at {where or 'body'}")
        elif isinstance(item, float):
            raise MatrixError(
                Codes.BAD_JSON, f"Floats are not allowed in canonical JSON at {where or 'body'}"
            )
        elif isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else k) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
