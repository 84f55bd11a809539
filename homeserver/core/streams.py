"""The streams a sync token is a position over."""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    # A user's thread subscriptions (MSC4306) changed.
    THREAD_SUBSCRIPTIONS = "thread_subscriptions"


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
        if not parts or len(parts) > len(TOKEN_STREAMS) or not all(map(_is_position, parts)):
            raise _invalid(f"Invalid stream token {token!r}")
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


# A position: ASCII digits (str.isdigit also takes other scripts' digits), within a BIGINT.
_DIGITS = re.compile(r"[0-9]{1,19}")
MAX_POSITION = 2**63 - 1


def _is_position(part: str) -> bool:
    return _DIGITS.fullmatch(part) is not None and int(part) <= MAX_POSITION


def _is_timeline_position(part: str) -> bool:
    """An event's place in a room's timeline: a position of the events stream, or below 0
    for events backfilled from other servers (numbered downwards)."""
    digits = part[1:] if part.startswith("-") else part
    return _is_position(digits)


def _invalid(message: str) -> Exception:
    from homeserver.core.errors import Codes, MatrixError

    return MatrixError(Codes.INVALID_PARAM, message)


@dataclass(frozen=True, slots=True)
class RoomPosition:
    """A place in a room's timeline, between two events: the tokens of ``/messages``,
    ``/context``, ``/relations`` and a sync's ``prev_batch``. Opaque to clients.

    The timeline is in topological order: by ``depth``, then ``stream_ordering`` (as
    Synapse). Two forms:

    - ``t<depth>_<stream>``: just after the event at ``(depth, stream)`` in that order
      (``stream`` is negative for history backfilled from other servers).
      Backwards from it come the events at or before it, forwards those after it.
      ``t<depth>_<stream>_<cap>`` is the same place reached by paginating backwards from a
      stream token: backwards it still leaves out the events after the stream position
      ``cap`` (events that came late, with a small depth, and were already given by the
      sync the client started from); forwards the cap does not apply.
    - ``s<stream>`` (and a whole sync token, ``s<events>_<account_data>_...``, whose
      events position counts): the timeline as it was at that point of the events stream.
      Backwards from it come the events at or before ``stream`` in the events stream, in
      topological order (so it is its own ``cap``); forwards, those after it.
    """

    depth: int | None
    stream: int
    cap: int | None = None

    @classmethod
    def parse(cls, token: str) -> RoomPosition:
        if token.startswith("t"):
            parts = token[1:].split("_")
            if (
                len(parts) not in (2, 3)
                or not _is_position(parts[0])
                or not _is_timeline_position(parts[1])
                or not all(map(_is_position, parts[2:]))
            ):
                raise _invalid(f"Invalid pagination token {token!r}")
            cap = int(parts[2]) if len(parts) == 3 else None
            return cls(int(parts[0]), int(parts[1]), cap)
        if token.startswith("s"):
            stream = StreamToken.parse(token).get(Stream.EVENTS)
            return cls(None, stream, stream)
        raise _invalid(f"Invalid pagination token {token!r}")

    @classmethod
    def at_stream(cls, stream: int) -> RoomPosition:
        return cls(None, stream, stream)

    @property
    def topological(self) -> tuple[int, int] | None:
        return None if self.depth is None else (self.depth, self.stream)

    def serialize(self) -> str:
        if self.depth is None:
            return f"s{self.stream}"
        if self.cap is None:
            return f"t{self.depth}_{self.stream}"
        return f"t{self.depth}_{self.stream}_{self.cap}"
