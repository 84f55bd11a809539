"""Application services: each one's place in the streams and its queue of transactions."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# One row per registered service (by its ``id``): how far its transactions have read each
# stream, the number of its last transaction, and its back-off after failures.
appservice_state = sa.Table(
    "appservice_state",
    metadata,
    sa.Column("service_id", sa.Text, primary_key=True),
    sa.Column("events_cursor", BigInt, nullable=False),
    sa.Column("receipts_cursor", BigInt, nullable=False),
    sa.Column("typing_cursor", BigInt, nullable=False),
    sa.Column("presence_cursor", BigInt, nullable=False),
    sa.Column("to_device_cursor", BigInt, nullable=False),
    sa.Column("last_txn_id", BigInt, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),  # failures of the pending transaction
    sa.Column("next_attempt_ts", BigInt, nullable=False),
    # The worker that sends this service's transactions, until lease_until_ts (so that one
    # transaction at a time is in flight, whichever workers run).
    sa.Column("lease_owner", sa.Text, nullable=True),
    sa.Column("lease_until_ts", BigInt, nullable=False),
)

# Rooms an application service published in its own network's room directory (PUT
# /directory/list/appservice/{networkId}/{roomId}): listed by /publicRooms with that
# network's third_party_instance_id, or include_all_networks.
appservice_room_list = sa.Table(
    "appservice_room_list",
    metadata,
    sa.Column("appservice_id", sa.Text, primary_key=True),
    sa.Column("network_id", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, primary_key=True, index=True),
)

# Transactions built but not yet acknowledged with a 200: sent in txn_id order, each until
# the service takes it; the cursors moved in the same write that queued it.
appservice_txns = sa.Table(
    "appservice_txns",
    metadata,
    sa.Column("service_id", sa.Text, primary_key=True),
    sa.Column("txn_id", BigInt, primary_key=True),
    sa.Column("body", sa.Text, nullable=False),  # the JSON body, as it is sent every time
    sa.Column("created_ts", BigInt, nullable=False),
)
