"""Backends: one per provider. ``send`` tells what became of one device's push."""

from __future__ import annotations

import ssl
from enum import Enum
from typing import Any, Protocol

JsonDict = dict[str, Any]


class Result(Enum):
    SENT = "sent"
    REJECTED = "rejected"  # the pushkey is dead: the homeserver removes the pusher
    RETRY = "retry"  # a passing failure: the homeserver tries again later


class Backend(Protocol):
    async def send(self, notification: JsonDict, device: JsonDict) -> Result: ...

    async def aclose(self) -> None: ...


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(ca_file)
    return context


def summary(notification: JsonDict, device: JsonDict) -> JsonDict:
    """What every backend carries: the notification without the device list, the counts
    flattened (as apps read them), and the device's ``data.default_payload`` merged in."""
    out: JsonDict = {k: v for k, v in notification.items() if k not in ("devices", "counts")}
    counts = notification.get("counts")
    if isinstance(counts, dict):
        for key in ("unread", "missed_calls"):
            if isinstance(counts.get(key), int):
                out[key] = counts[key]
    data = device.get("data")
    default = data.get("default_payload") if isinstance(data, dict) else None
    if isinstance(default, dict):
        out = {**default, **out}
    return out
