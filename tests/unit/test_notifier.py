"""The notifier's committed positions: learned from reads, raised by wake-ups, never lowered."""

from __future__ import annotations

from homeserver.core.streams import Stream
from homeserver.wakeups.bus import InMemoryBus
from homeserver.wakeups.notifier import Notifier


async def test_committed_positions_are_known_once_learned_and_only_rise() -> None:
    notifier = Notifier(InMemoryBus())
    # A wake-up before anything was read: some streams are still unknown.
    await notifier.notify(Stream.EVENTS, 7, room_id="!r:t")
    assert notifier.committed() is None
    read = {stream: 5 for stream in Stream}
    notifier.learn(read)
    known = notifier.committed()
    assert known == {**read, Stream.EVENTS: 7}  # the wake-up's position is kept
    # A copy: the caller's dict does not move under it.
    await notifier.notify(Stream.RECEIPTS, 9, room_id="!r:t")
    assert known[Stream.RECEIPTS] == 5
    assert notifier.committed() == {**read, Stream.EVENTS: 7, Stream.RECEIPTS: 9}
    # An older read or wake-up lowers nothing.
    notifier.learn({stream: 1 for stream in Stream})
    await notifier.notify(Stream.EVENTS, 6, room_id="!r:t")
    assert notifier.committed() == {**read, Stream.EVENTS: 7, Stream.RECEIPTS: 9}
