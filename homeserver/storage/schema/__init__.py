"""The one schema, as SQLAlchemy Core tables on one `metadata`; Alembic migrations are
generated from it. One module per area; every table is importable from here."""

from __future__ import annotations

from homeserver.storage.schema.accounts import (
    access_tokens,
    devices,
    filters,
    profiles,
    refresh_tokens,
    registration_tokens,
    uia_sessions,
    users,
)
from homeserver.storage.schema.appservice import (
    appservice_state,
    appservice_txns,
)
from homeserver.storage.schema.base import (
    UNSERVED_EVENTS,
    BigInt,
    metadata,
    stream_positions,
)
from homeserver.storage.schema.e2ee import (
    device_list_changes,
    e2e_cross_signing_keys,
    e2e_device_keys,
    e2e_fallback_keys,
    e2e_one_time_keys,
    e2e_signatures,
    room_key_backup_keys,
    room_key_backup_versions,
)
from homeserver.storage.schema.ephemeral import (
    account_data,
    device_inbox,
    presence,
    receipts,
    room_tags,
    to_device_txns,
    typing_notifications,
    typing_rooms,
)
from homeserver.storage.schema.features import (
    content_reports,
    delayed_events,
    sliding_sync_positions,
)
from homeserver.storage.schema.federation import (
    server_keys,
)
from homeserver.storage.schema.media import (
    media,
    media_thumbnails,
)
from homeserver.storage.schema.oauth import (
    login_tokens,
    oauth_browser_sessions,
    oauth_clients,
    oauth_codes,
    oauth_device_grants,
    sso_links,
    sso_sessions,
)
from homeserver.storage.schema.push import (
    event_push_actions,
    push_cursors,
    push_queue,
    push_rule_defaults,
    push_rules,
    pushers,
)
from homeserver.storage.schema.relations import (
    event_relations,
)
from homeserver.storage.schema.rooms import (
    current_state,
    event_auth,
    event_edges,
    event_forward_extremities,
    event_txns,
    events,
    rejections,
    room_aliases,
    room_memberships,
    rooms,
    state_group_entries,
    state_groups,
)
from homeserver.storage.schema.threepids import (
    threepid_sessions,
    threepid_tokens,
    user_threepids,
)

__all__ = [
    "BigInt",
    "UNSERVED_EVENTS",
    "access_tokens",
    "account_data",
    "appservice_state",
    "appservice_txns",
    "content_reports",
    "current_state",
    "delayed_events",
    "device_inbox",
    "device_list_changes",
    "devices",
    "e2e_cross_signing_keys",
    "e2e_device_keys",
    "e2e_fallback_keys",
    "e2e_one_time_keys",
    "e2e_signatures",
    "event_auth",
    "event_edges",
    "event_forward_extremities",
    "event_push_actions",
    "event_relations",
    "event_txns",
    "events",
    "filters",
    "media",
    "media_thumbnails",
    "metadata",
    "oauth_clients",
    "oauth_codes",
    "oauth_device_grants",
    "oauth_browser_sessions",
    "sso_links",
    "sso_sessions",
    "login_tokens",
    "presence",
    "profiles",
    "push_cursors",
    "push_queue",
    "push_rule_defaults",
    "push_rules",
    "pushers",
    "receipts",
    "refresh_tokens",
    "registration_tokens",
    "rejections",
    "room_aliases",
    "room_key_backup_keys",
    "room_key_backup_versions",
    "room_memberships",
    "room_tags",
    "rooms",
    "server_keys",
    "sliding_sync_positions",
    "state_group_entries",
    "state_groups",
    "stream_positions",
    "threepid_sessions",
    "threepid_tokens",
    "to_device_txns",
    "typing_notifications",
    "typing_rooms",
    "uia_sessions",
    "user_threepids",
    "users",
]
