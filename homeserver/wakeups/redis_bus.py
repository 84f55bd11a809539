"""The bus between workers: wake-ups published on a Redis channel every worker subscribes to.

Redis carries wake-ups only, never data, and keeps none of them: a worker that was cut off
from Redis (or Redis itself restarted) has missed some, so once it is subscribed again it
tells its resync callbacks, which read the database again (the notifier wakes every waiting
request, which computes from its token). A lost wake-up costs latency, never an event.

A worker's own wake-ups are delivered to its subscribers at once, without the round trip
through Redis, and skipped when Redis echoes them back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from homeserver.core import jsonutil
from homeserver.core.streams import Stream
from homeserver.wakeups.bus import Resync, Subscriber, Wakeup

logger = logging.getLogger(__name__)

# Redis calls fail after this long rather than hold a publisher (a send's answer) back.
SOCKET_TIMEOUT_S = 2.0
# Between attempts to subscribe again: doubling from the first to the last.
RECONNECT_FIRST_S = 0.05
RECONNECT_MAX_S = 1.0
# How long the subscriber waits for a message before it checks the connection again.
POLL_S = 1.0

_STREAMS = {s.value: s for s in Stream}


class RedisBus:
    def __init__(self, url: str, channel: str = "homeserver:wakeups") -> None:
        self._url = url
        self.channel = channel
        # Marks this worker's own messages, which Redis sends back to it too.
        self._origin = secrets.token_hex(8)
        self._subscribers: list[Subscriber] = []
        self._resyncs: list[Resync] = []
        # Named, so that an operator (or a test) can tell its connections apart.
        self.client_name = f"homeserver-bus-{self._origin}"
        self._publisher: Redis = _client(url, self.client_name)
        # The subscriber's connection while ``run`` holds one: ``close`` closes it too, as a
        # cancelled ``run`` may not have finished closing it (its connections would
        # otherwise be left to the garbage collector, after the event loop is gone).
        self._subscription: tuple[Any, Redis] | None = None
        # True while subscribed (``/health``); counts for the metrics and tests.
        self.subscribed = False
        self.resyncs = 0
        self.publish_failures = 0

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def on_resync(self, callback: Resync) -> None:
        self._resyncs.append(callback)

    async def publish(self, wakeup: Wakeup) -> None:
        await self._deliver(wakeup)
        message = jsonutil.dumps(
            {
                "o": self._origin,
                "s": wakeup.stream.value,
                "p": wakeup.position,
                "r": wakeup.room_id,
                "u": list(wakeup.user_ids),
                "t": wakeup.upto,
            }
        )
        try:
            await self._publisher.publish(self.channel, message)
        except (RedisError, OSError):
            # The other workers miss this one: they catch up when their wait times out, or
            # when they resubscribe (Redis is down for them too).
            self.publish_failures += 1
            logger.warning("wake-up not published", extra={"channel": self.channel})

    async def ping(self) -> bool:
        """Whether Redis answers now (``/health``)."""
        try:
            return bool(await self._publisher.ping())
        except (RedisError, OSError):
            return False

    async def run(self) -> None:
        """The subscriber, a background job: delivers the other workers' wake-ups, and
        subscribes again after a lost connection, then resyncs."""
        delay = RECONNECT_FIRST_S
        try:
            while True:
                client = _client(self._url, self.client_name)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                self._subscription = (pubsub, client)
                try:
                    await pubsub.subscribe(self.channel)
                    self.subscribed = True
                    delay = RECONNECT_FIRST_S
                    # Subscribed from here on: what was published before may be lost.
                    await self._resync()
                    while True:
                        message = await pubsub.get_message(timeout=POLL_S)
                        if message is None:
                            await pubsub.ping()  # a dead connection fails here
                            continue
                        if message.get("type") == "message":
                            await self._on_message(message["data"])
                except (RedisError, OSError):
                    if self.subscribed:
                        logger.warning("wake-up bus disconnected", extra={"channel": self.channel})
                    self.subscribed = False
                finally:
                    # Forgotten only once closed: a second cancellation (shut-down cancels
                    # until the job is done) may cut this short, and ``close`` finishes it.
                    await _close(pubsub, client)
                    self._subscription = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
        finally:
            self.subscribed = False

    async def close(self) -> None:
        if self._subscription is not None:
            await _close(*self._subscription)
            self._subscription = None
        await self._publisher.aclose()

    async def _on_message(self, data: Any) -> None:
        wakeup = _parse(data, self._origin)
        if wakeup is not None:
            await self._deliver(wakeup)

    async def _deliver(self, wakeup: Wakeup) -> None:
        for subscriber in self._subscribers:
            try:
                await subscriber(wakeup)
            except Exception:
                logger.exception("wake-up subscriber failed", extra={"stream": wakeup.stream})

    async def _resync(self) -> None:
        self.resyncs += 1
        started = time.monotonic()
        for callback in self._resyncs:
            try:
                await callback()
            except Exception:
                logger.exception("resync failed")
        logger.info(
            "wake-up bus subscribed, resynced",
            extra={"channel": self.channel, "ms": round((time.monotonic() - started) * 1000)},
        )


def _client(url: str, name: str) -> Redis:
    return Redis.from_url(
        url,
        client_name=name,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        socket_keepalive=True,
    )


async def _close(pubsub: Any, client: Redis) -> None:
    """Bounded: closing a dead connection must not hold up a reconnect or a shut-down."""
    for closing in (pubsub, client):
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT_S):
                await closing.aclose()
        except (RedisError, OSError, TimeoutError):
            pass


def _parse(data: Any, origin: str) -> Wakeup | None:
    """A message of another worker; None for our own, or one we cannot read (logged)."""
    try:
        body = jsonutil.loads(data)
        if body.get("o") == origin:
            return None
        stream = _STREAMS[body["s"]]
        position = body["p"]
        room_id = body.get("r")
        users = body.get("u") or []
        upto = body.get("t")
        if (
            not isinstance(position, int)
            or not (room_id is None or isinstance(room_id, str))
            or not all(isinstance(u, str) for u in users)
            or not (upto is None or isinstance(upto, int))
        ):
            raise ValueError("bad field")
        return Wakeup(stream, position, room_id, tuple(users), upto)
    except (ValueError, KeyError, TypeError, AttributeError):
        logger.warning("unreadable wake-up skipped")
        return None
