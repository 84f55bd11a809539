"""Gathers the ``routes`` of every Client-Server API module."""

from __future__ import annotations

from starlette.routing import BaseRoute

from client_api import (
    account,
    account_data,
    appservice,
    delayed_events,
    devices,
    directory,
    filters,
    key_backup,
    keys,
    knock,
    notifications,
    oauth,
    presence,
    profile,
    pushers,
    pushrules,
    receipts,
    relations,
    reports,
    room_summary,
    rooms,
    sliding_sync,
    sso,
    sync,
    thirdparty,
    threepids,
    to_device,
    typing_notifications,
    upgrade,
    user_directory,
    versions,
    websocket,
)

# Starlette tries routes in order: the long-poll /sync first, then sending (rooms), as
# they are most of the requests.
_MODULES = [
    sync,
    sliding_sync,
    rooms,
    versions,
    directory,
    account,
    devices,
    profile,
    filters,
    account_data,
    to_device,
    user_directory,
    websocket,
    presence,
    typing_notifications,
    receipts,
    relations,
    upgrade,
    knock,
    keys,
    key_backup,
    pushrules,
    pushers,
    notifications,
    threepids,
    room_summary,
    reports,
    delayed_events,
    appservice,
    thirdparty,
    oauth,
    sso,
]

client_routes: list[BaseRoute] = [r for m in _MODULES for r in m.client_routes]
root_routes: list[BaseRoute] = [r for m in _MODULES for r in getattr(m, "root_routes", [])]
