"""The admin API on background jobs (issue 22): what each of the server's jobs is doing, in
the shape of Synapse's ``/v1/background_updates/*`` where it applies.

Schema changes here are alembic migrations run before the server starts, so there are no
online "background updates" as Synapse has them: ``current_updates`` is always empty. What
runs in the background instead is listed under ``jobs``: singleton jobs (a lease in
``job_leases``; media retention), and the queues workers drain (pushers, application
services, federation destinations), each with its state, last run and next run.
"""

from __future__ import annotations

from homeserver.admin.users import require_admin
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.admin_jobs import AdminJobsStore, Lease
from media_repo.retention import LEASE_NAME as RETENTION_LEASE
from media_repo.retention import MediaRetention

# The jobs POST /v1/background_updates/start_job may start now.
STARTABLE = ("media_retention",)


class AdminJobs:
    def __init__(
        self,
        store: AdminJobsStore,
        retention: MediaRetention,
        clock: Clock,
        *,
        federation: bool,
        appservices: bool,
    ) -> None:
        self._store = store
        self._retention = retention
        self._clock = clock
        self._federation = federation
        self._appservices = appservices

    async def status(self, requester: Requester) -> JsonDict:
        require_admin(requester)
        return {"enabled": True, "current_updates": {}, "jobs": await self.jobs()}

    def enabled(self, requester: Requester) -> JsonDict:
        require_admin(requester)
        return {"enabled": True}

    async def start_job(self, requester: Requester, job_name: str) -> JsonDict:
        """Run a round of a job now, on this worker (Synapse's ``start_job``)."""
        require_admin(requester)
        if job_name not in STARTABLE:
            raise MatrixError(
                Codes.INVALID_PARAM,
                f"Unknown job: {job_name!r} (known: {', '.join(STARTABLE)})",
            )
        if not self._retention.enabled:
            raise MatrixError(
                Codes.INVALID_PARAM,
                "Media retention is not configured (media.retention in the config)",
            )
        deleted = await self._retention.run_once()
        if deleted is None:
            raise MatrixError(
                Codes.UNKNOWN, "Another worker holds this job's lease; it runs there", status=409
            )
        return {"deleted": deleted}

    async def jobs(self) -> list[JsonDict]:
        now = self._clock.now_ms()
        leases = {lease.name: lease for lease in await self._store.leases()}
        out = [self._retention_json(leases.pop(RETENTION_LEASE, None), now)]
        out.extend(_lease_json(lease, now) for lease in leases.values())
        out.append(await self._pushers_json(now))
        if self._appservices:
            out.extend(await self._services_json(now))
        if self._federation:
            out.append(await self._federation_json(now))
        return out

    def _retention_json(self, lease: Lease | None, now: int) -> JsonDict:
        retention = self._retention
        out: JsonDict = {
            "name": RETENTION_LEASE,
            "kind": "singleton",
            "interval_ms": retention.interval_ms,
            "owner": None,
            "lease_until_ts": None,
            "last_run_ts": None,
            "next_run_ts": None,
            "last_deleted": None,
        }
        if not retention.enabled:
            return out | {"state": "disabled"}
        held = lease is not None and lease.until_ts > now
        if lease is not None and held:
            # A round claims the lease for two intervals: it began two intervals before the
            # lease ends, and the next is due one interval after that.
            started = lease.until_ts - retention.lease_ms
            out |= {
                "owner": lease.owner,
                "lease_until_ts": lease.until_ts,
                "last_run_ts": started,
                "next_run_ts": started + retention.interval_ms,
            }
        if retention.last_round is not None:  # this worker's own last round
            ran_at, deleted = retention.last_round
            if out["last_run_ts"] is None or ran_at >= out["last_run_ts"]:
                out["last_run_ts"] = ran_at
            out["last_deleted"] = deleted
        return out | {"state": "running" if held else "waiting"}

    async def _pushers_json(self, now: int) -> JsonDict:
        found = await self._store.pusher_queues()
        state = "idle" if not found.queued else "backing_off" if found.backing_off else "pending"
        return {
            "name": "pusher_sender",
            "kind": "queue",
            "state": state,
            "pushers": found.pushers,
            "pushers_with_queue": found.pushers_with_queue,
            "pushers_backing_off": found.backing_off,
            "queued": found.queued,
            "oldest_queued_ts": found.oldest_event_ts,
            "next_run_ts": None if found.next_due_ts is None else max(found.next_due_ts, now),
        }

    async def _services_json(self, now: int) -> list[JsonDict]:
        out: list[JsonDict] = []
        for found in await self._store.service_queues():
            if not found.queued_txns:
                state, next_run = "idle", None
            elif found.attempts:
                state, next_run = "backing_off", max(found.next_attempt_ts, now)
            else:
                state, next_run = "pending", now
            out.append(
                {
                    "name": f"appservice:{found.service_id}",
                    "kind": "queue",
                    "state": state,
                    "queued": found.queued_txns,
                    "oldest_queued_ts": found.oldest_txn_ts,
                    "last_txn_id": found.last_txn_id,
                    "failed_attempts": found.attempts,
                    "owner": found.lease_owner if found.lease_until_ts > now else None,
                    "next_run_ts": next_run,
                }
            )
        return out

    async def _federation_json(self, now: int) -> JsonDict:
        found = await self._store.federation_queues()
        queued = found.queued_pdus + found.queued_edus
        if not queued:
            state = "idle"
        elif found.backing_off:
            state = "backing_off"
        else:
            state = "pending"
        return {
            "name": "federation_queue",
            "kind": "queue",
            "state": state,
            "destinations": found.destinations,
            "destinations_backing_off": found.backing_off,
            "destinations_catching_up": found.catching_up,
            "queued": queued,
            "queued_pdus": found.queued_pdus,
            "queued_edus": found.queued_edus,
            "oldest_queued_ts": found.oldest_edu_ts,
            "next_run_ts": (
                None
                if state == "idle"
                else now
                if state == "pending" or found.next_retry_ts is None
                else max(found.next_retry_ts, now)
            ),
        }


def _lease_json(lease: Lease, now: int) -> JsonDict:
    """A singleton job this service knows nothing more of than its lease."""
    held = lease.until_ts > now
    return {
        "name": lease.name,
        "kind": "singleton",
        "state": "running" if held else "waiting",
        "owner": lease.owner if held else None,
        "lease_until_ts": lease.until_ts if held else None,
        "last_run_ts": None,
        "next_run_ts": None,
    }
