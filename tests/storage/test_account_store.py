"""AccountStore, RegistrationTokenStore, UiaStore and FilterStore on both databases."""

from __future__ import annotations

import pytest

from homeserver.core.ids import UserID
from homeserver.storage.accounts import AccountStore, Profile
from homeserver.storage.database import Database
from homeserver.storage.filters import FilterStore
from homeserver.storage.registration_tokens import RegistrationTokenStore
from homeserver.storage.uia import UiaStore

ALICE = UserID("@alice:test")
BOB = UserID("@bob:test")
NOW = 1_700_000_000_000


async def test_create_and_get_user(db: Database) -> None:
    store = AccountStore(db)
    assert await store.create_user(
        ALICE, "hash", is_admin=False, created_ts=NOW, displayname="alice"
    )
    assert not await store.create_user(
        ALICE, "other", is_admin=True, created_ts=NOW, displayname=None
    )
    user = await store.get_user(ALICE)
    assert user is not None and user.password_hash == "hash" and not user.is_admin
    assert await store.get_user_case_insensitive(UserID("@ALICE:test")) == user
    assert await store.user_exists_ignoring_case(UserID("@Alice:test"))
    assert not await store.user_exists_ignoring_case(BOB)


async def test_deactivate_wipes_password(db: Database) -> None:
    store = AccountStore(db)
    await store.create_user(ALICE, "hash", is_admin=False, created_ts=NOW, displayname=None)
    await store.set_deactivated(ALICE)
    user = await store.get_user(ALICE)
    assert user is not None and user.deactivated and user.password_hash is None


async def test_profile_fields(db: Database) -> None:
    store = AccountStore(db)
    await store.create_user(ALICE, "hash", is_admin=False, created_ts=NOW, displayname="alice")
    assert await store.get_profile(ALICE) == Profile("alice", None)
    assert await store.set_profile_field(ALICE, "avatar_url", "mxc://test/a") == Profile(
        "alice", "mxc://test/a"
    )
    assert await store.set_profile_field(ALICE, "displayname", None) == Profile(
        None, "mxc://test/a"
    )
    assert await store.get_profile(BOB) is None
    with pytest.raises(ValueError):
        await store.set_profile_field(ALICE, "user_id", "x")


async def _device_with_token(store: AccountStore, user: UserID, device: str, token: bytes) -> None:
    # Token lookups join the user: create it on first use.
    await store.create_user(user, None, is_admin=False, created_ts=NOW, displayname=None)
    await store.upsert_device(user, device, None, NOW)
    await store.add_access_token(user, device, token, NOW, None, None)


async def test_delete_device_tokens_keeps_the_device(db: Database) -> None:
    store = AccountStore(db)
    await _device_with_token(store, ALICE, "D1", b"t1")
    refresh_id = await store.add_refresh_token(ALICE, "D1", b"r1", NOW)
    await store.add_access_token(ALICE, "D1", b"t2", NOW, NOW + 1, refresh_id)
    await _device_with_token(store, ALICE, "D2", b"t3")
    assert sorted(await store.delete_device_tokens(ALICE, "D1")) == [b"t1", b"t2"]
    assert await store.get_token(b"t1") is None
    assert await store.get_refresh_token(b"r1") is None
    assert await store.get_device(ALICE, "D1") is not None
    assert await store.get_token(b"t3") is not None


async def test_delete_devices_except(db: Database) -> None:
    store = AccountStore(db)
    for device, token in (("D1", b"t1"), ("D2", b"t2"), ("D3", b"t3")):
        await _device_with_token(store, ALICE, device, token)
    await _device_with_token(store, BOB, "D1", b"b1")
    device_ids, hashes = await store.delete_devices_except(ALICE, "D2")
    assert sorted(device_ids) == ["D1", "D3"] and sorted(hashes) == [b"t1", b"t3"]
    assert [d.device_id for d in await store.get_devices(ALICE)] == ["D2"]
    device_ids, hashes = await store.delete_devices_except(ALICE, None)
    assert device_ids == ["D2"] and hashes == [b"t2"]
    assert await store.get_devices(ALICE) == []
    assert await store.get_token(b"b1") is not None  # bob untouched


async def test_registration_token_uses(db: Database) -> None:
    store = RegistrationTokenStore(db)
    assert await store.create_token("t", uses_allowed=2, expiry_time=NOW + 10)
    assert not await store.create_token("t", uses_allowed=None, expiry_time=None)
    assert await store.any_usable(NOW)
    assert await store.reserve("t", NOW)
    assert await store.reserve("t", NOW)
    assert not await store.reserve("t", NOW)  # two pending uses fill it
    assert not await store.is_usable("t", NOW)
    await store.release("t")
    assert await store.is_usable("t", NOW)
    await store.complete("t")
    token = await store.get_token("t")
    assert token is not None and (token.pending, token.completed) == (0, 1)
    assert await store.reserve("t", NOW)
    assert not await store.reserve("t", NOW)
    await store.release("t")
    assert not await store.is_usable("t", NOW + 10)  # expired
    assert not await store.any_usable(NOW + 10)
    assert not await store.reserve("unknown", NOW)
    assert await store.delete_token("t")
    assert await store.get_token("t") is None


async def test_unlimited_registration_token(db: Database) -> None:
    store = RegistrationTokenStore(db)
    await store.create_token("u", uses_allowed=None, expiry_time=None)
    for _ in range(5):
        assert await store.reserve("u", NOW)
        await store.complete("u")
    token = await store.get_token("u")
    assert token is not None and token.completed == 5


async def test_uia_sessions(db: Database) -> None:
    store = UiaStore(db)
    await store.create_session("s1", NOW, "POST /register", {"requester": None})
    await store.create_session("s2", NOW + 100, "POST /register", {})
    await store.update_session("s1", ["m.login.dummy"], {"requester": None, "x": 1})
    session = await store.get_session("s1")
    assert session is not None
    assert session.completed == ["m.login.dummy"] and session.params["x"] == 1
    assert session.request_fingerprint == "POST /register"
    expired = await store.delete_sessions_before(NOW + 1)
    assert [s.session_id for s in expired] == ["s1"]
    assert await store.get_session("s1") is None
    deleted = await store.delete_session("s2")
    assert deleted is not None and deleted.session_id == "s2"
    assert await store.delete_session("s2") is None


async def test_filters(db: Database) -> None:
    store = FilterStore(db)
    assert await store.add_filter(ALICE, {"room": {"timeline": {"limit": 5}}}) == 0
    assert await store.add_filter(ALICE, {}) == 1
    assert await store.add_filter(BOB, {"presence": {}}) == 0
    assert await store.get_filter(ALICE, 0) == {"room": {"timeline": {"limit": 5}}}
    assert await store.get_filter(BOB, 0) == {"presence": {}}
    assert await store.get_filter(BOB, 1) is None
