"""Server-side key backups (spec: client-server API, "Server-side key backups").

A user's backups are numbered versions; keys may only be written to the latest one that is
not deleted. The server stores what clients encrypted and cannot read it: it only compares
the metadata of two copies of a session to keep the better one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.key_backup import BackupVersion, KeyBackupStore, KeysUpdated, RoomKey

MAX_ALGORITHM_BYTES = 255  # ours: an identifier
MAX_SESSION_ID_BYTES = 255  # ours: megolm session IDs are 43 characters


@dataclass(frozen=True, slots=True)
class KeyData:
    """One session's backup as a client uploads it (spec: KeyBackupData)."""

    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: JsonDict


def should_replace(stored: RoomKey, uploaded: RoomKey) -> bool:
    """spec: keep the verified key; then the one with the lower ``first_message_index``; then
    the one with the lower ``forwarded_count``; on a tie the stored one stays."""
    if stored.is_verified != uploaded.is_verified:
        return uploaded.is_verified
    if stored.first_message_index != uploaded.first_message_index:
        return uploaded.first_message_index < stored.first_message_index
    return uploaded.forwarded_count < stored.forwarded_count


def _version_number(version: str) -> int | None:
    """Versions are decimal numbers here; anything else names no backup."""
    if not version.isdigit() or version != str(int(version)):
        return None
    return int(version)


def _version_json(v: BackupVersion) -> JsonDict:
    return {
        "algorithm": v.algorithm,
        "auth_data": v.auth_data,
        "count": v.count,
        "etag": str(v.etag),
        "version": str(v.version),
    }


def _updated_json(u: KeysUpdated) -> JsonDict:
    return {"etag": str(u.etag), "count": u.count}


def _key_json(k: RoomKey) -> JsonDict:
    return {
        "first_message_index": k.first_message_index,
        "forwarded_count": k.forwarded_count,
        "is_verified": k.is_verified,
        "session_data": k.session_data,
    }


class KeyBackupService:
    def __init__(self, store: KeyBackupStore) -> None:
        self._store = store

    # --- versions --------------------------------------------------------------------------

    async def create_version(
        self, requester: Requester, algorithm: str, auth_data: JsonDict
    ) -> str:
        self._check_algorithm(algorithm)
        check_json_numbers(auth_data, "auth_data")
        return str(await self._store.create_version(requester.user_id, algorithm, auth_data))

    async def get_version(self, requester: Requester, version: str | None) -> JsonDict:
        """That version, or the latest with ``None``."""
        if version is None:
            found = await self._store.get_version(requester.user_id, None)
            if found is None:
                raise MatrixError(Codes.NOT_FOUND, "No current backup version")
            return _version_json(found)
        return _version_json(await self._existing(requester, version))

    async def update_version(
        self,
        requester: Requester,
        version: str,
        algorithm: str,
        auth_data: JsonDict,
        body_version: str | None,
    ) -> None:
        """spec: only ``auth_data`` changes; the algorithm and version must be the same."""
        if body_version is not None and body_version != version:
            raise MatrixError(Codes.INVALID_PARAM, "version does not match the path")
        check_json_numbers(auth_data, "auth_data")
        current = await self._existing(requester, version)
        if algorithm != current.algorithm:
            raise MatrixError(Codes.INVALID_PARAM, "Algorithm does not match")
        if not await self._store.update_auth_data(requester.user_id, current.version, auth_data):
            raise MatrixError(Codes.NOT_FOUND, "Unknown backup version")

    async def delete_version(self, requester: Requester, version: str) -> None:
        """spec: deleting a deleted backup succeeds; one that never existed is a 404."""
        number = _version_number(version)
        if number is None or not await self._store.delete_version(requester.user_id, number):
            raise MatrixError(Codes.NOT_FOUND, "Unknown backup version")

    # --- keys ------------------------------------------------------------------------------

    async def put_keys(
        self, requester: Requester, version: str, rooms: Mapping[str, Mapping[str, KeyData]]
    ) -> JsonDict:
        keys = []
        for room_id, sessions in rooms.items():
            RoomID.parse(room_id)
            for session_id, data in sessions.items():
                self._check_session_id(session_id)
                check_json_numbers(data.session_data, "session_data")
                keys.append(
                    RoomKey(
                        room_id,
                        session_id,
                        data.first_message_index,
                        data.forwarded_count,
                        data.is_verified,
                        data.session_data,
                    )
                )
        number = _version_number(version)
        updated = None
        if number is not None:
            updated = await self._store.put_keys(requester.user_id, number, keys, should_replace)
        if updated is None:
            latest = await self._store.get_version(requester.user_id, None)
            if latest is None:
                raise MatrixError(Codes.NOT_FOUND, "Unknown backup version")
            # spec: only the latest version takes keys; the client is told which it is.
            raise MatrixError(
                Codes.WRONG_ROOM_KEYS_VERSION,
                "Wrong backup version",
                current_version=str(latest.version),
            )
        return _updated_json(updated)

    async def get_keys(
        self,
        requester: Requester,
        version: str,
        room_id: RoomID | None = None,
        session_id: str | None = None,
    ) -> JsonDict:
        self._check_location(room_id, session_id)
        backup = await self._existing(requester, version)
        keys = await self._store.get_keys(requester.user_id, backup.version, room_id, session_id)
        if session_id is not None:
            if not keys:
                raise MatrixError(Codes.NOT_FOUND, "Key not found")
            return _key_json(keys[0])
        sessions: dict[str, JsonDict] = {}
        rooms: dict[str, JsonDict] = {}
        for k in keys:
            rooms.setdefault(k.room_id, {"sessions": {}})["sessions"][k.session_id] = _key_json(k)
            sessions[k.session_id] = _key_json(k)
        if room_id is not None:
            return {"sessions": sessions}
        return {"rooms": rooms}

    async def delete_keys(
        self,
        requester: Requester,
        version: str,
        room_id: RoomID | None = None,
        session_id: str | None = None,
    ) -> JsonDict:
        self._check_location(room_id, session_id)
        number = _version_number(version)
        updated = None
        if number is not None:
            updated = await self._store.delete_keys(requester.user_id, number, room_id, session_id)
        if updated is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown backup version")
        return _updated_json(updated)

    # --- helpers ---------------------------------------------------------------------------

    async def _existing(self, requester: Requester, version: str) -> BackupVersion:
        number = _version_number(version)
        found = None if number is None else await self._store.get_version(requester.user_id, number)
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown backup version")
        return found

    @classmethod
    def _check_location(cls, room_id: str | None, session_id: str | None) -> None:
        if room_id is not None:
            RoomID.parse(room_id)
        if session_id is not None:
            cls._check_session_id(session_id)

    @staticmethod
    def _check_algorithm(algorithm: str) -> None:
        # Any algorithm is stored (clients agree on them among themselves); it must name one.
        if not _is_name(algorithm, MAX_ALGORITHM_BYTES):
            raise MatrixError(
                Codes.INVALID_PARAM,
                f"algorithm must be 1 to {MAX_ALGORITHM_BYTES} bytes without control characters",
            )

    @staticmethod
    def _check_session_id(session_id: str) -> None:
        if not _is_name(session_id, MAX_SESSION_ID_BYTES):
            raise MatrixError(
                Codes.INVALID_PARAM,
                f"Session IDs must be 1 to {MAX_SESSION_ID_BYTES} bytes without control characters",
            )


def _is_name(value: str, max_bytes: int) -> bool:
    """1 to ``max_bytes`` bytes, no control characters (not every database stores them)."""
    return 0 < len(value.encode()) <= max_bytes and not any(
        ord(c) < 0x20 or c == "\x7f" for c in value
    )
