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
    # Moves when a device's one-time or fallback keys change (an upload, a claim): syncs
    # keep each device's key counts until it moves.
    ONE_TIME_KEYS = "one_time_keys"


# The order of positions inside a sync token; append only, never reorder.
TOKEN_STREAMS: tuple[Stream, ...] = tuple(Stream)


class StreamToken:
    """A sync token: one position per stream, ``s<events>_<account_data>_..._<device_lists>``.

    Opaque to clients; stable across restarts and workers because positions come from the
    database. A token with fewer positions (from an older server) reads the rest as 0.
    """

    __slots__ = ("positions",)

    def __init__(self, positions: dict[Stream, int]) -> None:
        self.positions = positions

    @classmethod
    def parse(cls, token: str) -> StreamToken:
        parts = token[1:].split("_") if token.startswith("s") else []
        if not parts or len(parts) > len(TOKEN_STREAMS) or not all(p.isdigit() for p in parts):
            from homeserver.core.errors import Codes, MatrixError

            raise MatrixError(Codes.INVALID_PARAM, f"Invalid stream token {token!r}")
        positions = dict.fromkeys(TOKEN_STREAMS, 0)
        for stream, part in zip(TOKEN_STREAMS, parts, strict=False):  # fewer: 0
            positions[stream] = int(part)
        return cls(positions)

    def serialize(self) -> str:
        get = self.positions.get
        return "s" + "_".join([str(get(s, 0)) for s in TOKEN_STREAMS])

    def get(self, stream: Stream) -> int:
        return self.positions.get(stream, 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamToken):
            return False
        mine, theirs = self.positions.get, other.positions.get
        return all(mine(s, 0) == theirs(s, 0) for s in TOKEN_STREAMS)

    def __hash__(self) -> int:
        return hash(self.serialize())

    def __repr__(self) -> str:
        return f"StreamToken({self.serialize()})"
