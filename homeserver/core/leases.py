"""Singleton jobs: a background job that must run on one worker at a time runs where its
lease is held (``job_leases``, through ``LeaseStore``).

Every worker runs a ``Singleton`` for the job. One takes the lease and starts the job; it
renews the lease every ``renew_ms``, and stops the job before the lease can lapse if it
cannot renew (the database out of reach, or another worker took the lease). The others try
every ``standby_ms``; when the holder dies (stops renewing) the lease lapses after
``lease_ms`` and the next try takes it: a takeover within ``lease_ms + standby_ms``. The job
keeps its state in the database (queues, cursors), so the new holder resumes where the old
one stopped. Lease times come from the database's clock (one for every worker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)


class LeaseStore(Protocol):
    async def hold(self, name: str, owner: str, lease_ms: int) -> bool:
        """Take or renew the lease of ``name`` for ``lease_ms``; False: another holds it."""
        ...

    async def release(self, name: str, owner: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    # A holder that has not renewed for this long has lost the job.
    lease_ms: int = 6_000
    # The holder renews this often; it stops the job when it could not renew for
    # lease_ms - renew_ms (before anyone else may take the lease).
    renew_ms: int = 2_000
    # A worker without the lease tries to take it this often.
    standby_ms: int = 2_000


class Singleton:
    """The background job ``job`` under the lease ``name``, held by ``owner`` (unique per
    worker process)."""

    def __init__(
        self,
        name: str,
        job: Callable[[], Awaitable[None]],
        store: LeaseStore,
        owner: str,
        timing: LeaseTiming = LeaseTiming(),
    ) -> None:
        self.name = name
        self.job = job
        self._store = store
        self._owner = owner
        self._timing = timing
        # True while this worker runs the job (for metrics and tests).
        self.held = False
        # How many times this worker took the lease.
        self.terms = 0
        self._abandoned = False
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Singleton({self.name!r}, {self.job!r})"

    async def run(self) -> None:
        """The background job of every worker: wait for the lease, run the job while it is
        held, for ever. The lease is given up when the worker stops, so that another need
        not wait for it to lapse."""
        self._task = asyncio.current_task()
        try:
            while True:
                if await self._try(self._store.hold):
                    if await self._lead():
                        return  # the job ended: given up, the caller may start it again
                else:
                    await asyncio.sleep(self._timing.standby_ms / 1000)
        finally:
            if self.held and not self._abandoned:
                try:
                    await self._store.release(self.name, self._owner)
                except Exception:
                    logger.exception("lease not released", extra={"job": self.name})
            self.held = False

    def abandon(self) -> None:
        """Stop as a dead worker would: the job ends, the lease is left to lapse (tests)."""
        self._abandoned = True
        if self._task is not None:
            self._task.cancel()

    async def _try(self, claim: Callable[[str, str, int], Awaitable[bool]]) -> bool | None:
        """One claim or renewal; None if the database did not answer in time."""
        try:
            async with asyncio.timeout(self._timing.renew_ms / 1000):
                return await claim(self.name, self._owner, self._timing.lease_ms)
        except TimeoutError:
            logger.warning("lease not renewed in time", extra={"job": self.name})
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("lease claim failed", extra={"job": self.name})
        return None

    async def _lead(self) -> bool:
        """Run the job while the lease is held; stop it before the lease could lapse. True
        when the job ended by itself."""
        timing = self._timing
        # The lease was taken no earlier than now: it lasts at least until here.
        expires = time.monotonic() + timing.lease_ms / 1000
        self.held = True
        self.terms += 1
        logger.info("singleton job taken", extra={"job": self.name, "owner": self._owner})
        job: asyncio.Future[None] = asyncio.ensure_future(self.job())
        try:
            while True:
                done, _ = await asyncio.wait({job}, timeout=timing.renew_ms / 1000)
                if done:
                    job.result()  # the job's failure is the caller's (it restarts us)
                    return True
                started = time.monotonic()
                renewed = await self._try(self._store.hold)
                if renewed:
                    expires = started + timing.lease_ms / 1000
                elif renewed is False:
                    logger.warning("singleton lease lost", extra={"job": self.name})
                    self.held = False
                    return False
                elif time.monotonic() + timing.renew_ms / 1000 >= expires:
                    # Another try could end after the lease: stop while it is still ours.
                    logger.warning("singleton stopped: lease not renewed", extra={"job": self.name})
                    self.held = False
                    return False
        finally:
            if not job.done():
                job.cancel()
            await asyncio.gather(job, return_exceptions=True)
