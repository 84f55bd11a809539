"""The keyring: fetching, caching, expiry, notaries and denied keys (on both databases)."""

from __future__ import annotations

import pytest
from signedjson.key import generate_signing_key

from homeserver.core.clock import FakeClock
from homeserver.core.config import TrustedKeyServer
from homeserver.federation.keyring import MAX_KEY_VALIDITY_MS, Keyring, SignatureError
from homeserver.federation.local_keys import LocalKeys
from homeserver.federation.policy import ServerPolicy
from homeserver.storage.database import Database
from homeserver.storage.server_keys import ServerKeyStore
from tests.federation_helpers import DAY_MS, FakeFederation, FakeRemote


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fed() -> FakeFederation:
    return FakeFederation()


def make_keyring(db: Database, fed: FakeFederation, clock: FakeClock, **kwargs: object) -> Keyring:
    local = LocalKeys("us.test", generate_signing_key("us"), {}, clock, DAY_MS)
    return Keyring(
        local,
        ServerKeyStore(db),
        fed,
        ServerPolicy(),
        clock,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_fetches_once_then_verifies_from_the_cache(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    fed.key_responses["remote.test"] = remote.key_response(clock.now_ms() + DAY_MS)
    keyring = make_keyring(db, fed, clock)
    for _ in range(3):
        await keyring.verify_json_for_server("remote.test", remote.sign({"a": 1}), clock.now_ms())
    assert fed.calls == [("remote.test", "GET", "/_matrix/key/v2/server")]
    # A second keyring (another worker, a restart) finds them in the database.
    other = make_keyring(db, fed, clock)
    await other.verify_json_for_server("remote.test", remote.sign({"b": 2}), clock.now_ms())
    assert len(fed.calls) == 1


async def test_bad_or_missing_signature_is_refused(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    fed.key_responses["remote.test"] = remote.key_response(clock.now_ms() + DAY_MS)
    keyring = make_keyring(db, fed, clock)
    signed = remote.sign({"a": 1})
    signed["a"] = 2
    with pytest.raises(SignatureError, match="bad signature"):
        await keyring.verify_json_for_server("remote.test", signed, clock.now_ms())
    with pytest.raises(SignatureError, match="not signed"):
        await keyring.verify_json_for_server("remote.test", {"a": 1}, clock.now_ms())
    impostor = FakeRemote("remote.test", version="r1")  # same key ID, another key
    with pytest.raises(SignatureError, match="bad signature"):
        await keyring.verify_json_for_server("remote.test", impostor.sign({"a": 1}), clock.now_ms())


async def test_expired_keys_are_refused_and_fetched_again(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    fed.key_responses["remote.test"] = remote.key_response(clock.now_ms() + 1000)
    keyring = make_keyring(db, fed, clock)
    await keyring.verify_json_for_server("remote.test", remote.sign({}), clock.now_ms())
    clock.advance(60_000)
    # Still the same stale answer from the server: refused.
    with pytest.raises(SignatureError, match="no key"):
        await keyring.verify_json_for_server("remote.test", remote.sign({}), clock.now_ms())
    assert len(fed.calls) == 2
    fed.key_responses["remote.test"] = remote.key_response(clock.now_ms() + DAY_MS)
    clock.advance(60_000)  # past the refetch pause
    await keyring.verify_json_for_server("remote.test", remote.sign({}), clock.now_ms())
    assert len(fed.calls) == 3


async def test_validity_is_capped_at_seven_days(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    fed.key_responses["remote.test"] = remote.key_response(clock.now_ms() + 365 * DAY_MS)
    keyring = make_keyring(db, fed, clock)
    start = clock.now_ms()
    await keyring.verify_json_for_server("remote.test", remote.sign({}), start)
    fed.key_responses.clear()  # the server is gone
    await keyring.verify_json_for_server(
        "remote.test", remote.sign({}), start + MAX_KEY_VALIDITY_MS
    )
    with pytest.raises(SignatureError):
        await keyring.verify_json_for_server(
            "remote.test", remote.sign({}), start + MAX_KEY_VALIDITY_MS + 1
        )


async def test_old_keys_verify_what_was_signed_before_they_expired(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    old_signed = remote.sign({"event": 1})
    remote.rotate("r2", expired_ts=clock.now_ms() - 10)
    fed.key_responses["remote.test"] = remote.key_response(clock.now_ms() + DAY_MS)
    keyring = make_keyring(db, fed, clock)
    # Signed at a time the old key was valid (an event's origin_server_ts): accepted.
    await keyring.verify_json_for_server("remote.test", old_signed, clock.now_ms() - 20)
    # As a request now: the old key is expired.
    with pytest.raises(SignatureError):
        await keyring.verify_json_for_server("remote.test", old_signed, clock.now_ms())


async def test_key_responses_that_do_not_prove_themselves_are_refused(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    keyring = make_keyring(db, fed, clock)
    unsigned = remote.key_response(clock.now_ms() + DAY_MS)
    del unsigned["signatures"]
    bad = [
        unsigned,
        {**remote.key_response(clock.now_ms() + DAY_MS), "server_name": "other.test"},
        {**remote.key_response(clock.now_ms() + DAY_MS), "valid_until_ts": "soon"},
        FakeRemote("remote.test", "r9").sign(
            {
                "server_name": "remote.test",
                "valid_until_ts": clock.now_ms() + DAY_MS,
                "verify_keys": {remote.key_id: {"key": remote.verify_key}},
            }
        ),
        ["not", "an", "object"],
        # Out of canonical JSON's range (would not fit a BIGINT column), signed all the same.
        remote.sign(
            {
                "server_name": "remote.test",
                "valid_until_ts": 2**63,
                "verify_keys": {remote.key_id: {"key": remote.verify_key}},
            }
        ),
        remote.sign(
            {
                "server_name": "remote.test",
                "valid_until_ts": clock.now_ms() + DAY_MS,
                "verify_keys": {remote.key_id: {"key": remote.verify_key}},
                "old_verify_keys": {"ed25519:old": {"key": "abc", "expired_ts": -1}},
            }
        ),
        remote.sign(
            {
                "server_name": "remote.test",
                "valid_until_ts": clock.now_ms() + DAY_MS,
                "verify_keys": {remote.key_id: {"key": remote.verify_key}, "ed25519:x": {}},
            }
        ),
    ]
    for answer in bad:
        fed.key_responses["remote.test"] = answer  # type: ignore[assignment]
        with pytest.raises(SignatureError):
            await keyring.verify_json_for_server("remote.test", remote.sign({}), 0)
        clock.advance(60_000)
    assert await ServerKeyStore(db).get_keys("remote.test") == []


async def test_notary_is_asked_when_the_server_does_not_answer(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    notary = FakeRemote("notary.test")
    answer = notary.sign(remote.key_response(clock.now_ms() + DAY_MS))
    fed.notary_answers["notary.test"] = {"server_keys": [answer]}
    trusted = TrustedKeyServer(
        server_name="notary.test", verify_keys={notary.key_id: notary.verify_key}
    )
    keyring = make_keyring(db, fed, clock, trusted_key_servers=[trusted])
    await keyring.verify_json_for_server("remote.test", remote.sign({}), clock.now_ms())
    assert [c[0] for c in fed.calls] == ["remote.test", "notary.test"]
    stored = await ServerKeyStore(db).get_keys("remote.test")
    assert [k.from_server for k in stored] == ["notary.test"]


async def test_notary_answer_must_be_signed_by_the_notary_and_the_server(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    notary = FakeRemote("notary.test")
    trusted = TrustedKeyServer(
        server_name="notary.test", verify_keys={notary.key_id: notary.verify_key}
    )
    keyring = make_keyring(db, fed, clock, trusted_key_servers=[trusted])
    # Not signed by the notary.
    fed.notary_answers["notary.test"] = {
        "server_keys": [remote.key_response(clock.now_ms() + DAY_MS)]
    }
    with pytest.raises(SignatureError):
        await keyring.verify_json_for_server("remote.test", remote.sign({}), clock.now_ms())
    # Signed by the notary, but the keys are not the server's own (a lying notary).
    liar = FakeRemote("remote.test", "r1")
    fed.notary_answers["notary.test"] = {
        "server_keys": [notary.sign(liar.key_response(clock.now_ms() + DAY_MS))]
    }
    clock.advance(60_000)
    with pytest.raises(SignatureError):
        await keyring.verify_json_for_server("remote.test", remote.sign({}), clock.now_ms())


async def test_denied_keys_are_never_used(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    fed.key_responses["remote.test"] = remote.key_response(clock.now_ms() + DAY_MS)
    keyring = make_keyring(db, fed, clock, denied_verify_keys=[remote.verify_key + "="])
    with pytest.raises(SignatureError, match="no key"):
        await keyring.verify_json_for_server("remote.test", remote.sign({}), clock.now_ms())
    assert await keyring.key_responses("remote.test", (), clock.now_ms()) == []


async def test_our_own_signatures_need_no_fetch(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    keyring = make_keyring(db, fed, clock)
    signed = keyring._local.sign({"x": 1})
    await keyring.verify_json_for_server("us.test", signed, clock.now_ms())
    assert fed.calls == []


async def test_notary_serving_co_signs_what_we_hold(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    fed.key_responses["remote.test"] = remote.key_response(clock.now_ms() + DAY_MS)
    keyring = make_keyring(db, fed, clock)
    served = await keyring.key_responses("remote.test", (), clock.now_ms())
    assert len(served) == 1
    assert set(served[0]["signatures"]) == {"remote.test", "us.test"}
    # Held and still valid: served without asking the server again.
    served = await keyring.key_responses("remote.test", (remote.key_id,), clock.now_ms())
    assert len(served) == 1 and len(fed.calls) == 1
    # Asked for a key we do not have: the server is asked (it does not have it either).
    clock.advance(60_000)
    assert await keyring.key_responses("remote.test", ("ed25519:nope",), clock.now_ms()) == []
    assert len(fed.calls) == 2
    # An unreachable server with nothing cached: an empty answer, not an error.
    assert await keyring.key_responses("gone.test", (), clock.now_ms()) == []


async def test_notary_without_configured_keys_has_its_keys_fetched_from_it(
    db: Database, fed: FakeFederation, clock: FakeClock
) -> None:
    remote = FakeRemote("remote.test")
    notary = FakeRemote("notary.test")
    fed.key_responses["notary.test"] = notary.key_response(clock.now_ms() + DAY_MS)
    fed.notary_answers["notary.test"] = {
        "server_keys": [notary.sign(remote.key_response(clock.now_ms() + DAY_MS))]
    }
    keyring = make_keyring(
        db, fed, clock, trusted_key_servers=[TrustedKeyServer(server_name="notary.test")]
    )
    await keyring.verify_json_for_server("remote.test", remote.sign({}), clock.now_ms())
    assert fed.calls == [
        ("remote.test", "GET", "/_matrix/key/v2/server"),
        ("notary.test", "POST", "/_matrix/key/v2/query"),
        ("notary.test", "GET", "/_matrix/key/v2/server"),
    ]
