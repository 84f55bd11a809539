"""Property-based tests of the JSON limits (homeserver/core/json_limits.py): whatever the limits
let in, every encoder on the way takes; whatever they refuse is a Matrix error, never a
crash."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver.core.errors import MatrixError
from homeserver.core.json_limits import MAX_JSON_DEPTH, MAX_SAFE_INT, json_depth, loads_limited
from homeserver.events.format import canonical_json

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_TREES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _nest(value: Any, depth: int) -> Any:
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# Trees, sometimes buried near, at or past the depth limit.
JSON_VALUES = st.builds(
    _nest, _TREES, st.integers(0, 10) | st.integers(MAX_JSON_DEPTH - 5, MAX_JSON_DEPTH + 20)
)


def _within_limits(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        if isinstance(item, int) and not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
            return False
        if isinstance(item, str) and "\x00" in item:
            return False
        if isinstance(item, dict):
            if any("\x00" in k for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return json_depth(value) <= MAX_JSON_DEPTH


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_limits_accept_exactly_what_every_encoder_takes(value: Any) -> None:
    try:
        raw = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        # orjson cannot write it (past 254 levels, or an int past 64 bits): the raw text
        # from the stdlib encoder is what a client could send.
        raw = json.dumps(value).encode()
    try:
        decoded = loads_limited(raw)
    except MatrixError as e:
        assert e.code in ("M_BAD_JSON", "M_NOT_JSON")
        assert not _within_limits(value)
        return
    assert _within_limits(decoded)
    # Accepted: the deepest envelope we serve it in encodes everywhere.
    envelope = {"rooms": {"join": {"!r:t": {"timeline": {"events": [{"content": decoded}]}}}}}
    frame = {"type": "sync", "result": envelope}
    assert orjson.loads(orjson.dumps(frame)) == frame
    assert json.loads(json.dumps(frame)) == frame
    if "." not in raw.decode() and "e" not in raw.decode().lower():
        canonical_json(frame)  # no floats: canonical JSON takes it too


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_junk_is_a_matrix_error(raw: bytes) -> None:
    try:
        loads_limited(raw)
    except MatrixError as e:
        assert e.code in ("M_BAD_JSON", "M_NOT_JSON")
