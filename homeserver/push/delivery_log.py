"""Failed push deliveries: logged so an operator sees them, counted so metrics can.

Each failure is counted (``DeliveryFailures.total`` and by reason). It is logged at WARNING
with the pusher (its ID, ``app_id`` and a hash of its pushkey: a pushkey is a device token
and is never logged), the gateway host and the reason, at most once per ``interval_ms`` per
pusher: a dead gateway retried with backoff by many pushers cannot flood the log. The line
after a quiet period says how many failures were not logged in between.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from urllib.parse import urlsplit

from cachetools import LRUCache

from homeserver.core.clock import Clock

logger = logging.getLogger(__name__)

LOG_INTERVAL_MS = 60_000
# Pushers remembered for rate limiting; one forgotten early may log once more, no harm.
_TRACKED_PUSHERS = 100_000


def gateway_host(url: object) -> str:
    """The host of a gateway URL, for logs ("" if it has none)."""
    if not isinstance(url, str):
        return ""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def pushkey_hash(pushkey: str) -> str:
    """A short stable name for a pushkey in logs, from which it cannot be recovered."""
    return hashlib.sha256(pushkey.encode()).hexdigest()[:12]


class DeliveryFailures:
    """The counter of failed deliveries and its rate-limited log."""

    def __init__(self, clock: Clock, interval_ms: int = LOG_INTERVAL_MS) -> None:
        self._clock = clock
        self._interval_ms = interval_ms
        self.total = 0
        self.by_reason: Counter[str] = Counter()
        # pusher ID -> (when it was last logged, failures not logged since)
        self._last: LRUCache[int, tuple[int, int]] = LRUCache(maxsize=_TRACKED_PUSHERS)

    def failed(self, *, pusher_id: int, app_id: str, pushkey: str, host: str, reason: str) -> None:
        self.total += 1
        self.by_reason[reason] += 1
        now = self._clock.now_ms()
        last = self._last.get(pusher_id)
        if last is not None and now - last[0] < self._interval_ms:
            self._last[pusher_id] = (last[0], last[1] + 1)
            return
        self._last[pusher_id] = (now, 0)
        logger.warning(
            "push delivery failed",
            extra={
                "pusher_id": pusher_id,
                "app_id": app_id,
                "pushkey_hash": pushkey_hash(pushkey),
                "gateway_host": host,
                "reason": reason,
                "not_logged_since_last": 0 if last is None else last[1],
            },
        )
