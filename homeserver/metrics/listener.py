"""The metrics listener: ``GET /metrics`` in Prometheus' text format, on an address of its
own (config ``metrics.listen``), run as a background job.

A few lines of HTTP/1.1 rather than a second web server: one request per connection, a
bounded request head, a timeout, nothing else served. Scrapes come from the operator's
Prometheus, on their own network, and never pass through the client API's middleware,
rate limits or access tokens.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST

from homeserver.core.config import MetricsListenConfig
from homeserver.metrics.registry import Metrics

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192
READ_TIMEOUT_S = 10.0


class MetricsListener:
    def __init__(self, metrics: Metrics, config: MetricsListenConfig) -> None:
        self._metrics = metrics
        self._config = config
        self.port: int | None = None  # bound (the config's, or the one given for port 0)
        self.ready = asyncio.Event()  # set once it listens

    async def run(self) -> None:
        """The background job: listen until cancelled."""
        server = await asyncio.start_server(
            self._handle, self._config.host, self._config.port, limit=MAX_HEAD_BYTES
        )
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        logger.info("metrics listening", extra={"host": self._config.host, "port": self.port})
        try:
            async with server:
                await server.serve_forever()
        finally:
            self.port = None
            self.ready.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, content_type = await self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, body, content_type = "400 Bad Request", b"bad request\n", "text/plain"
        except Exception:
            logger.exception("metrics scrape failed")
            status, body, content_type = "500 Internal Server Error", b"error\n", "text/plain"
        try:
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return "400 Bad Request", b"bad request\n", "text/plain"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != b"/metrics":
            return "404 Not Found", b"not found: try /metrics\n", "text/plain"
        if method != b"GET":
            return "405 Method Not Allowed", b"GET only\n", "text/plain"
        return "200 OK", await self._metrics.render(), CONTENT_TYPE_LATEST
