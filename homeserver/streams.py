"""The streams a sync token is a position over."""

from __future__ import annotations

from enum import StrEnum


class Stream(StrEnum):
    EVENTS = "events"
    ACCOUNT_DATA = "account_data"
    RECEIPTS = "receipts"
    TYPING = "typing"
    PRESENCE = "presence"
    TO_DEVICE = "to_device"
    DEVICE_LISTS = "device_lists"


# The order of positions inside a sync token; append only, never reorder.
TOKEN_STREAMS: tuple[Stream, ...] = tuple(Stream)
