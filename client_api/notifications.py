"""GET /notifications (spec: "Listing Notifications")."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.push.notifications import NotificationService
from homeserver.web.edge import items_response, query_int, require_user, services_of


@dataclass(frozen=True, slots=True)
class NotificationServices:
    """What the routes of /notifications call (built by the composition root)."""

    push_notifications: NotificationService


async def get_notifications(request: Request) -> Response:
    """GET /_matrix/client/v3/notifications"""
    hs = services_of(request, NotificationServices)
    requester = await require_user(request)
    q = request.query_params
    return items_response(
        await hs.push_notifications.get_notifications(
            requester, q.get("from"), query_int(request, "limit", minimum=1), q.get("only")
        ),
        "notifications",
    )


client_routes = [Route("/v3/notifications", get_notifications, methods=["GET"])]
