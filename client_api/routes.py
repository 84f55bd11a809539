"""Gathers the ``routes`` of every Client-Server API module."""

from __future__ import annotations

from starlette.routing import BaseRoute

from client_api import versions

_MODULES = [versions]

client_routes: list[BaseRoute] = [r for m in _MODULES for r in m.client_routes]
root_routes: list[BaseRoute] = [r for m in _MODULES for r in getattr(m, "root_routes", [])]
