"""Failed pushes are visible: logged at WARNING (rate-limited per pusher) and counted."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from homeserver.core.clock import FakeClock
from homeserver.push.delivery_log import LOG_INTERVAL_MS, DeliveryFailures, pushkey_hash
from tests.api.test_pushers import _config, _send, _setup
from tests.helpers import serve
from tests.push_servers import FakeGateway, until

LOGGER = "homeserver.push.delivery_log"


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_rate_limited_per_pusher(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    failures = DeliveryFailures(clock)
    caplog.set_level(logging.WARNING, LOGGER)
    for _ in range(1000):  # a dead gateway, retried hard
        failures.failed(pusher_id=1, app_id="a", pushkey="secret", host="h", reason="HTTP 503")
    failures.failed(pusher_id=2, app_id="b", pushkey="other", host="h", reason="HTTP 503")
    assert failures.total == 1001 and failures.by_reason["HTTP 503"] == 1001
    assert [r.pusher_id for r in _lines(caplog)] == [1, 2]  # type: ignore[attr-defined]
    clock.advance(LOG_INTERVAL_MS)
    failures.failed(pusher_id=1, app_id="a", pushkey="secret", host="h", reason="HTTP 503")
    last = _lines(caplog)[-1]
    assert last.not_logged_since_last == 999  # type: ignore[attr-defined]
    assert all("secret" not in str(r.__dict__) for r in _lines(caplog))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_gateway_failure_logged_with_pusher_host_and_reason(
    tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    clock = FakeClock()
    async with FakeGateway() as gateway, serve(_config(tmp_path, db_url), clock) as (hs, client):
        gateway.status = 503
        a, _, room_id = await _setup(client, gateway)
        await _send(client, a, room_id, "1")
        await hs.pusher_sender.run_once()
        await until(lambda: len(gateway.received) == 1)
        await until(lambda: hs.pusher_sender.failures.total == 1)
        clock.advance(1000)  # the first back-off
        await hs.pusher_sender.run_once()
        await until(lambda: hs.pusher_sender.failures.total == 2)
        (line,) = _lines(caplog)  # the second failure, within the interval, is not logged
        assert line.levelno == logging.WARNING
        assert line.getMessage() == "push delivery failed"
        fields = line.__dict__
        assert fields["app_id"] == "org.example.app"
        assert fields["gateway_host"] == "127.0.0.1"
        assert fields["reason"] == "HTTP 503"
        assert fields["pushkey_hash"] == pushkey_hash("key1")
        assert "key1" not in str(fields)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_woken_round_retries_a_backed_off_pusher_once_it_is_due(
    tmp_path: Path, db_url: str
) -> None:
    """A round woken by new events claims pushers only when it queued rows or when a row or
    back-off this worker knows of is due: a backed-off pusher is left alone until then."""
    clock = FakeClock()
    async with FakeGateway() as gateway, serve(_config(tmp_path, db_url), clock) as (hs, client):
        sender = hs.pusher_sender
        gateway.status = 503
        a, _, room_id = await _setup(client, gateway)
        await _send(client, a, room_id, "1")
        await sender._run_round(None, claim_always=False)  # queued here: claimed at once
        await until(lambda: sender.failures.total == 1)
        gateway.status = 200
        await sender._run_round(None, claim_always=False)  # backed off: nothing is due
        await asyncio.sleep(0.2)
        assert len(gateway.received) == 1
        clock.advance(1000)  # the first back-off is over
        await sender._run_round(None, claim_always=False)
        await until(lambda: len(gateway.received) == 2)
        assert sender.failures.total == 1
