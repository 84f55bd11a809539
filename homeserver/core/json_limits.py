"""The one set of limits on the structure of JSON that enters the server.

Everything that arrives from outside (client request bodies, query-string JSON such as
filters, WebSocket frames, and federation PDUs and EDUs once they land) is decoded by
``loads_limited`` or checked by ``check_json_limits`` before anything is stored. The limits
sit well below what every encoder and store on the way can handle, so that nothing we accept
can later fail to render:

- nesting depth at most ``MAX_JSON_DEPTH`` (100) containers. orjson refuses to encode past
  254 levels and the stdlib encoder (canonical JSON, SQLAlchemy's JSON columns) recurses in
  Python up to about 1 000; a sync response wraps an event's content in about ten more levels
  (rooms, join, room, timeline, events, event), and a WebSocket frame in a few more, so 100
  leaves room for every envelope with a wide margin. Real Matrix content (encrypted events,
  power levels, push rules, cross-signing keys) is under ten levels deep.
- integers within the canonical JSON range ``[-(2**53)+1, (2**53)-1]`` (spec, appendices
  "Canonical JSON"): what every client's JSON (JavaScript's doubles) reads exactly. orjson
  already refuses ``NaN``, ``Infinity`` and integers past 64 bits.
- no NUL character (``\\u0000``) in a string or key of a client's document: PostgreSQL's
  text columns cannot hold one, and names, types and keys from bodies land in them.

The spec's other limits (an event is at most 65 536 bytes, ``type`` and ``state_key`` at
most 255 bytes, identifiers at most 255 bytes) are checked where they apply, in
``homeserver.events.format`` and ``homeserver.core.ids``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from homeserver.core.errors import Codes, MatrixError

MAX_JSON_DEPTH = 100
# spec, appendices "Canonical JSON": integers must be in [-(2**53)+1, (2**53)-1].
MAX_SAFE_INT = 2**53 - 1

# 2**53 has 16 digits: a document without a run of 16 digits holds no integer out of range.
_LONG_DIGITS = re.compile(rb"[0-9]{16}")


def loads_limited(raw: bytes | str, *, int_range: bool = True) -> Any:
    """Decode JSON that came from outside: ``M_NOT_JSON`` unless it is JSON, ``M_BAD_JSON``
    past the limits (depth, and unless not ``int_range`` integer range: a federation
    transaction's integers are checked per PDU, by its room's version, and per EDU)."""
    try:
        # orjson refuses NaN, Infinity and integers past 64 bits, as Matrix JSON must.
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MatrixError(Codes.NOT_JSON, "Content not JSON") from e
    data = raw.encode() if isinstance(raw, str) else raw
    # These tests run in C over the raw bytes: the walk in Python only runs for a document
    # that could break a limit (more opening brackets than the depth, a long number, an
    # escaped NUL).
    brackets = data.count(b"[") + data.count(b"{")
    nul = b"\\u0000" in data
    long_digits = int_range and _LONG_DIGITS.search(data) is not None
    if brackets > MAX_JSON_DEPTH or nul or long_digits:
        check_json_limits(value, allow_nul=False, int_range=int_range)
    return value


def query_json(raw: str, name: str) -> Any:
    """JSON in a query parameter (a filter): ``M_BAD_JSON`` unless it is JSON within limits."""
    try:
        return loads_limited(raw)
    except MatrixError as e:
        if e.code == Codes.NOT_JSON:
            raise MatrixError(Codes.BAD_JSON, f"{name} is not valid JSON") from None
        raise


def check_json_limits(
    value: Any,
    where: str = "",
    *,
    allow_floats: bool = True,
    allow_nul: bool = True,
    int_range: bool = True,
) -> None:
    """Refuse, with ``M_BAD_JSON``, JSON nested deeper than ``MAX_JSON_DEPTH``, if
    ``int_range`` integers out of the canonical range, unless ``allow_floats`` floats
    (canonical JSON has none) and unless ``allow_nul`` a NUL character in a string or key.

    Iterative: a document of any depth is walked without recursion.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, where)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            if not allow_nul and "\x00" in item:
                raise MatrixError(Codes.BAD_JSON, f"NUL character at {path or 'body'}")
            continue
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if int_range and not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                raise MatrixError(Codes.BAD_JSON, f"Integer out of range at {path or 'body'}")
        elif isinstance(item, float):
            if not allow_floats:
                raise MatrixError(
                    Codes.BAD_JSON, f"Floats are not allowed in canonical JSON at {path or 'body'}"
                )
        elif isinstance(item, dict):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise MatrixError(
                    Codes.BAD_JSON, f"JSON is nested deeper than {MAX_JSON_DEPTH} levels"
                )
            if not allow_nul and any("\x00" in k for k in item):
                raise MatrixError(Codes.BAD_JSON, f"NUL character in a key at {path or 'body'}")
            stack.extend((v, depth, f"{path}.{k}" if path else str(k)) for k, v in item.items())
        elif isinstance(item, list | tuple):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise MatrixError(
                    Codes.BAD_JSON, f"JSON is nested deeper than {MAX_JSON_DEPTH} levels"
                )
            stack.extend((v, depth, f"{path}[{i}]") for i, v in enumerate(item))


def json_depth(value: Any) -> int:
    """How many containers deep ``value`` is (a scalar is 0, ``[]`` and ``{}`` are 1)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
            deepest = max(deepest, depth + 1)
    return deepest
