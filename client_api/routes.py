"""Gathers the ``routes`` of every Client-Server API module."""

from __future__ import annotations

from starlette.routing import BaseRoute

from client_api import account, devices, filters, profile, rooms, sync, versions

_MODULES = [versions, rooms, sync, account, devices, profile, filters]

client_routes: list[BaseRoute] = [r for m in _MODULES for r in m.client_routes]
root_routes: list[BaseRoute] = [r for m in _MODULES for r in getattr(m, "root_routes", [])]
