"""Every route of the admin API, mounted at /_synapse/admin by homeserver/routing.py."""

from __future__ import annotations

from starlette.routing import BaseRoute

from admin_api import federation, jobs, media, rooms, server, users

admin_routes: list[BaseRoute] = [
    *users.routes,
    *rooms.routes,
    *server.routes,
    *media.routes,
    *federation.routes,
    *jobs.routes,
]
# The spec's own administration endpoints, mounted under /_matrix/client.
client_admin_routes: list[BaseRoute] = [*users.client_routes]
