"""The checks on a PDU received from another server, before its auth rules (server-server API
"Checks performed on receipt of a PDU", steps 1-3), and the auth of an event's auth chain.

1. Format: a valid PDU of its room version (types, sizes, canonical JSON from v6, depth within
   the canonical integer range, no reference to itself); otherwise it is dropped.
2. Signatures: the sender's server, the event ID's server in v1-v2, and the server of a
   restricted join's `join_authorised_via_users_server`; otherwise it is dropped.
3. Content hash: on a mismatch the event is *redacted*, not dropped: its signatures cover the
   redacted form, which the auth rules still need (CVE-2025-30355 came from dropping).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from signedjson.types import VerifyKey

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict
from homeserver.events.auth import (
    CREATE,
    MEMBER,
    check_auth,
    check_auth_events_selection,
)
from homeserver.events.format import (
    auth_event_ids,
    check_event_size_and_shape,
    compute_content_hash,
    event_id_of,
    prev_event_ids,
    redact,
    verify_event_signature,
)
from homeserver.events.power_levels import domain_of, is_int
from homeserver.events.room_versions import EventFormat, RoomVersion

# Bounds other servers apply too: an event citing more parents or auth events than this is not
# one a correct server builds, and each entry costs a lookup.
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
_HASH_ROOM_ID = re.compile(r"![A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class ServerKey:
    """A server's signing key as its key server published it."""

    verify_key: VerifyKey
    # v5+: a signature only counts if made while the key was valid (rooms/fragments/
    # v5-signing-requirements.md); None for a key without an expiry (an old_verify_key has one).
    valid_until_ts: int | None = None


# (server_name, key_id) -> the key, or None when the server does not publish it.
KeyLookup = Callable[[str, str], ServerKey | None]


def _bad(reason: str) -> MatrixError:
    return MatrixError(Codes.BAD_JSON, reason)


def check_pdu_format(event: JsonDict, version: RoomVersion) -> None:
    """Step 1: raise `M_BAD_JSON` (or `M_TOO_LARGE`) unless `event` is a well-formed PDU."""
    check_event_size_and_shape(event, version)
    is_create = event.get("type") == CREATE and event.get("state_key") == ""
    sender = event.get("sender")
    if not isinstance(sender, str):
        raise _bad("The PDU has no sender")
    try:
        UserID.parse(sender)
    except MatrixError as e:
        raise _bad("The PDU's sender is not a valid user ID") from e
    if not isinstance(event.get("content"), dict):
        raise _bad("The PDU's content is not an object")
    if not is_int(event.get("origin_server_ts")):
        raise _bad("The PDU's origin_server_ts is not a canonical integer")
    depth = event.get("depth")
    # Checked for every version: a depth past the canonical range (2**63 and the like) breaks
    # the topological order the other servers compute.
    if not is_int(depth) or depth < 0:
        raise _bad("The PDU's depth is not a canonical non-negative integer")
    room_id = event.get("room_id")
    if version.room_id_is_create_event_hash and is_create:
        if "room_id" in event:
            raise _bad("A room version 12 m.room.create event has no room_id")
    elif not isinstance(room_id, str) or not room_id.startswith("!"):
        raise _bad("The PDU's room_id is not a room ID")
    elif version.room_id_is_create_event_hash and not _HASH_ROOM_ID.fullmatch(room_id):
        # v12: `!` and the create event's reference hash, URL-safe base64 (appendices, room
        # IDs); no server name.
        raise _bad("A room version 12 room_id is the create event's hash")
    for key, limit in (("prev_events", MAX_PREV_EVENTS), ("auth_events", MAX_AUTH_EVENTS)):
        entries = event.get(key)
        if not isinstance(entries, list):
            raise _bad(f"The PDU's {key} is not a list")
        if len(entries) > limit:
            raise _bad(f"The PDU lists more than {limit} {key}")
        if version.event_format is EventFormat.V1:
            well_formed = all(
                isinstance(e, list)
                and len(e) == 2
                and isinstance(e[0], str)
                and e[0].startswith("$")
                and isinstance(e[1], dict)
                for e in entries
            )
        else:
            well_formed = all(isinstance(e, str) and e.startswith("$") for e in entries)
        if not well_formed:
            raise _bad(f"The PDU's {key} are not event IDs")
    if version.event_format is EventFormat.V1:
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id.startswith("$") or not domain_of(event_id):
            raise _bad("A room version 1-2 PDU needs an event_id of the form $id:server")
    own_id = event_id_of(event, version)
    prevs, auths = prev_event_ids(event, version), auth_event_ids(event, version)
    if own_id in prevs or own_id in auths:
        raise _bad("The PDU lists itself as a prev or auth event")
    if len(set(prevs)) != len(prevs):
        raise _bad("The PDU lists a prev event twice")


def required_signers(event: JsonDict, version: RoomVersion) -> set[str]:
    """The servers whose signatures the event must carry (server-server API "Validating hashes
    and signatures on received events")."""
    servers = {domain_of(event.get("sender"))}
    if version.event_format is EventFormat.V1:
        servers.add(domain_of(event.get("event_id")))
    content = event.get("content")
    if (
        version.restricted_join_rule
        and event.get("type") == MEMBER
        and isinstance(content, dict)
        and content.get("membership") == "join"
        and "join_authorised_via_users_server" in content
    ):
        servers.add(domain_of(content["join_authorised_via_users_server"]))
    return {s for s in servers if s is not None}


def check_signatures(event: JsonDict, version: RoomVersion, keys: KeyLookup) -> None:
    """Step 2: raise `M_FORBIDDEN` unless every required server signed the redacted event with
    a key that was valid (v5+) at the event's origin_server_ts."""
    signatures = event.get("signatures")
    if not isinstance(signatures, dict):
        raise MatrixError(Codes.FORBIDDEN, "The PDU carries no signatures")
    ts = event.get("origin_server_ts")
    for server in sorted(required_signers(event, version)):
        server_signatures = signatures.get(server)
        key_ids = sorted(server_signatures) if isinstance(server_signatures, dict) else []
        if not any(_verified(event, version, server, key_id, keys, ts) for key_id in key_ids):
            raise MatrixError(Codes.FORBIDDEN, f"The PDU is not validly signed by {server}")


def _verified(
    event: JsonDict, version: RoomVersion, server: str, key_id: str, keys: KeyLookup, ts: object
) -> bool:
    if not key_id.startswith("ed25519:"):
        return False
    key = keys(server, key_id)
    if key is None:
        return False
    if (
        version.enforce_key_validity
        and key.valid_until_ts is not None
        and (not is_int(ts) or ts > key.valid_until_ts)
    ):
        return False
    return verify_event_signature(event, server, key.verify_key, version)


def content_hash_matches(event: JsonDict) -> bool:
    hashes = event.get("hashes")
    expected = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(expected, str):
        return False
    return hmac.compare_digest(expected.encode(), compute_content_hash(event).encode())


def validate_received_pdu(event: JsonDict, version: RoomVersion, keys: KeyLookup) -> JsonDict:
    """Steps 1-3: raise for a PDU to drop; return it, or its redacted form on a content-hash
    mismatch (which is then stored and authed as redacted, never served with its content)."""
    check_pdu_format(event, version)
    check_signatures(event, version, keys)
    if content_hash_matches(event):
        return event
    return redact(event, version)


def auth_chain_rejections(events: Mapping[str, JsonDict], version: RoomVersion) -> dict[str, str]:
    """Step 4 for a set of events that holds its own auth chains: each event against its own
    `auth_events`, auth events first. Returns the rejected event IDs with the reason.

    An event whose auth event is missing from `events` or rejected is rejected too, so a forged
    event deep in a chain (a power level its sender could not grant) takes its dependants down.
    """
    rejected: dict[str, str] = {}
    done: set[str] = set()
    for event_id in _auth_order(events, version):
        event = events[event_id]
        ids = auth_event_ids(event, version)
        chain_ids = _chain_ids(event, version)
        missing = [a for a in chain_ids if a not in events]
        if missing:
            rejected[event_id] = f"auth event {missing[0]} is unknown"
            continue
        bad = [a for a in chain_ids if a in rejected or a not in done]
        if bad:
            rejected[event_id] = f"auth event {bad[0]} was rejected or is in a cycle"
            continue
        try:
            keyed = check_auth_events_selection(version, event, [events[a] for a in ids])
            create_event = (
                events[chain_ids[-1]]
                if version.room_id_is_create_event_hash and event.get("type") != CREATE
                else None
            )
            check_auth(version, event, keyed, create_event)
        except MatrixError as e:
            rejected[event_id] = str(e)
        finally:
            done.add(event_id)
    return rejected


def _chain_ids(event: JsonDict, version: RoomVersion) -> list[str]:
    """The events `event` is authorised by: its `auth_events`, and in v12 (where the create
    event is never among them) the create event its room ID names."""
    ids = auth_event_ids(event, version)
    if version.room_id_is_create_event_hash and event.get("type") != CREATE:
        room_id = event.get("room_id")
        return [*ids, "$" + room_id[1:] if isinstance(room_id, str) else ""]
    return ids


def _auth_order(events: Mapping[str, JsonDict], version: RoomVersion) -> list[str]:
    """The IDs of `events` with every event after its auth events (a cycle, which only a forger
    builds, leaves its members out: they end up unknown to their dependants)."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for root in events:
        if state.get(root):
            continue
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            event_id, expanded = stack.pop()
            if expanded:
                state[event_id] = 2
                order.append(event_id)
                continue
            if state.get(event_id):
                continue
            state[event_id] = 1
            stack.append((event_id, True))
            for parent in _chain_ids(events[event_id], version):
                if parent in events and not state.get(parent):
                    stack.append((parent, False))
    return order
