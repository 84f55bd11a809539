"""Every federation route, gathered for ``homeserver/app.py``."""

from __future__ import annotations

from federation import keys, media, public_rooms, query, send, user_keys, version

# Mounted at /_matrix/federation (when federation is enabled).
federation_routes = [
    *version.routes,
    *query.routes,
    *user_keys.routes,
    *public_rooms.routes,
    *media.routes,
    *send.routes,
]
# Mounted at /_matrix/key (always: our keys are public).
key_routes = keys.key_routes
