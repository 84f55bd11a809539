"""Encoding responses made of stored items, so that one item cannot fail the whole response.

A response that lists stored items (sync, /messages, /context, /relations, /notifications,
WebSocket frames) is encoded whole first: the happy path costs one ``orjson.dumps``, as
before. Only when that fails (an item stored before the JSON limits, or written by other
means, that orjson cannot encode) is the response walked: every element of a list that
cannot be encoded is left out whole and logged with its ID; objects are walked into, except
one that is an item itself (an event, an account-data entry), which is left out whole.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from homeserver.core.errors import Codes, MatrixError

logger = logging.getLogger(__name__)

_ENCODE_ERRORS = (orjson.JSONEncodeError, TypeError, ValueError, RecursionError)


def dumps_items(value: Any, what: str) -> bytes:
    """``value`` as JSON bytes, leaving out what cannot be encoded (see the module).

    ``what`` names the response in the log. If even the pruned response cannot be encoded
    (the response is itself one unrenderable item, such as ``/event``), ``M_NOT_FOUND``.
    """
    try:
        return orjson.dumps(value)
    except _ENCODE_ERRORS:
        pass
    ok, pruned = _pruned(value, what)
    if ok:
        try:
            return orjson.dumps(pruned)
        except _ENCODE_ERRORS:
            pass
    logger.warning("response cannot be rendered", extra={"response": what, **_ids(value)})
    raise MatrixError(Codes.NOT_FOUND, "The item cannot be rendered")


def dumps_item(value: Any, what: str) -> bytes:
    """One stored item as JSON bytes (the content of one account-data entry or state
    event); ``M_NOT_FOUND``, logged, if it cannot be rendered: never rendered in part."""
    try:
        return orjson.dumps(value)
    except _ENCODE_ERRORS:
        logger.warning("item cannot be rendered", extra={"response": what})
        raise MatrixError(Codes.NOT_FOUND, "The item cannot be rendered") from None


def _encodes(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except _ENCODE_ERRORS:
        return False
    return True


def _is_item(value: Any) -> bool:
    """An event (it has an ID) or an account-data, to-device or ephemeral entry."""
    return isinstance(value, dict) and (
        "event_id" in value or ("type" in value and "content" in value)
    )


def _ids(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {"item_kind": type(value).__name__}
    fields = ("event_id", "room_id", "type", "sender", "message_id")
    found = {k: value[k] for k in fields if isinstance(value.get(k), str)}
    content = value.get("content")
    if isinstance(content, dict) and isinstance(content.get("message_id"), str):
        found.setdefault("message_id", content["message_id"])  # to-device messages
    return found


def _drop(item: Any, what: str, where: str) -> None:
    logger.warning(
        "item left out of a response: it cannot be rendered",
        extra={"response": what, "at": where, **_ids(item)},
    )


def _pruned(value: Any, what: str, where: str = "") -> tuple[bool, Any]:
    """``(True, copy without the unencodable items)`` or ``(False, None)``. New containers
    are built on the way down: the values themselves (perhaps cached) are never changed."""
    if _encodes(value):
        return True, value
    if _is_item(value):
        return False, None
    if isinstance(value, list):
        kept: list[Any] = []
        for i, element in enumerate(value):
            if _encodes(element):
                kept.append(element)
                continue
            # A list holds items (events, notifications, entries): one is served whole or
            # left out, never in part.
            _drop(element, what, f"{where}[{i}]")
        return True, kept
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, sub_value in value.items():
            if _encodes(sub_value):
                out[key] = sub_value
                continue
            path = f"{where}.{key}" if where else str(key)
            ok, sub = _pruned(sub_value, what, path)
            if ok:
                out[key] = sub
            elif _is_item(sub_value):
                _drop(sub_value, what, path)
            else:
                return False, None
        return True, out
    return False, None
