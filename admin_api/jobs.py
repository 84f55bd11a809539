"""The admin API on background jobs: Synapse's ``/v1/background_updates/status``,
``/v1/background_updates/enabled`` (GET) and ``/v1/background_updates/start_job`` paths, with
our jobs listed under ``jobs`` in the status (homeserver/admin/jobs.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.admin.jobs import AdminJobs
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class AdminJobServices:
    jobs: AdminJobs


def _jobs(request: Request) -> AdminJobs:
    return services_of(request, AdminJobServices).jobs


async def status(request: Request) -> Response:
    """GET /_synapse/admin/v1/background_updates/status"""
    requester = await require_user(request)
    return json_response(await _jobs(request).status(requester))


async def enabled(request: Request) -> Response:
    """GET /_synapse/admin/v1/background_updates/enabled"""
    requester = await require_user(request)
    return json_response(_jobs(request).enabled(requester))


class StartJobBody(RequestBody):
    job_name: str = Field(min_length=1, max_length=255)


async def start_job(request: Request) -> Response:
    """POST /_synapse/admin/v1/background_updates/start_job"""
    requester = await require_user(request)
    body = await parse_body(request, StartJobBody)
    return json_response(await _jobs(request).start_job(requester, body.job_name))


routes = [
    Route("/v1/background_updates/status", status, methods=["GET"]),
    Route("/v1/background_updates/enabled", enabled, methods=["GET"]),
    Route("/v1/background_updates/start_job", start_job, methods=["POST"]),
]
