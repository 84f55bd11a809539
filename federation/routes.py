"""Every federation route, gathered for ``homeserver/app.py``."""

from __future__ import annotations

from federation import keys, query, version

# Mounted at /_matrix/federation (when federation is enabled).
federation_routes = [*version.routes, *query.routes]
# Mounted at /_matrix/key (always: our keys are public).
key_routes = keys.key_routes
