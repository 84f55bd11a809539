"""Every federation route, gathered for ``homeserver/app.py``."""

from __future__ import annotations

from federation import (
    hierarchy,
    keys,
    media,
    membership,
    openid,
    public_rooms,
    query,
    rooms,
    send,
    user_keys,
    version,
)

# Mounted at /_matrix/federation (when federation is enabled).
federation_routes = [
    *version.routes,
    *query.routes,
    *user_keys.routes,
    *public_rooms.routes,
    *media.routes,
    *rooms.routes,
    *membership.routes,
    *openid.routes,
    *send.routes,
    *hierarchy.routes,
]
# With federation off, third parties still check OpenID tokens here.
openid_routes = openid.routes
# Mounted at /_matrix/key (always: our keys are public).
key_routes = keys.key_routes
