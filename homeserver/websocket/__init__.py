"""The WebSocket sync transport: one long-lived connection pushing what ``/sync`` returns.

The protocol (docs/websocket.md) lives here, free of any web framework: the route hands a
``Transport`` (receive a text frame, send one, close) to ``WebSocketService.serve``. A
connection is a loop of ``SyncService.sync`` calls, each starting from the last
``next_batch``, so a frame is exactly a ``/sync`` response and a client that reconnects with
its last token gets what it missed, no more, no less. Nothing is computed twice: the sync
service already waits on the notifier.

Each connection has four tasks: a reader (frames from the client, requests answered in
order), a sync loop, a heartbeat and a writer. Everything the client gets goes through one
bounded outbox; a client that stops reading fills it and is closed (4008), so it costs at
most ``max_queued_frames`` frames of memory and never slows anyone else.
"""

from __future__ import annotations

from homeserver.websocket.connection import Connection
from homeserver.websocket.protocol import (
    PATH,
    UNSTABLE_FEATURE,
    CloseCode,
    Transport,
    TransportClosed,
)
from homeserver.websocket.service import WebSocketService

__all__ = [
    "PATH",
    "UNSTABLE_FEATURE",
    "CloseCode",
    "Connection",
    "Transport",
    "TransportClosed",
    "WebSocketService",
]
