"""Application service registration files: what is accepted, and the clear refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homeserver.appservice.registration import (
    RegistrationError,
    load_registrations,
    parse_registration,
)
from homeserver.cli import main
from homeserver.core.config import ConfigError, load_config
from tests.appservice_helpers import registration, write_registration


def test_a_full_registration_is_read() -> None:
    service = parse_registration(
        registration("http://127.0.0.1:9000/", **{"de.sorunome.msc2409.push_ephemeral": True}),
        "test",
        "bridge.yaml",
    )
    assert service.url == "http://127.0.0.1:9000"
    assert service.sender == "@bridgebot:test"
    assert service.receive_ephemeral and not service.rate_limited
    assert service.is_exclusive_user("@bridge_alice:test")
    assert service.is_exclusive_user("@bridgebot:test")
    assert not service.is_user_in_namespace("@alice:test")
    # spec: the regex must match the whole ID.
    assert not service.is_user_in_namespace("@xbridge_alice:test")
    assert service.is_exclusive_alias("#bridge_room:test")
    assert service.protocols == ("irc",)


def test_unstable_ephemeral_name_alone_turns_it_on() -> None:
    data = registration(None, **{"de.sorunome.msc2409.push_ephemeral": True})
    del data["receive_ephemeral"]
    assert parse_registration(data, "test", "f").receive_ephemeral
    assert parse_registration(data, "test", "f").url is None


def _without(key: str) -> dict[str, Any]:
    data = registration("http://127.0.0.1:9000")
    del data[key]
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_without("id"), "'id'"),
        (_without("as_token"), "'as_token'"),
        (_without("hs_token"), "'hs_token'"),
        (_without("sender_localpart"), "'sender_localpart'"),
        (_without("url"), "'url' must be given"),
        (_without("namespaces"), "'namespaces'"),
        (registration("ftp://x"), "http(s) URL"),
        (registration(None, sender_localpart="Bad Name"), "sender_localpart"),
        (
            registration(None, namespaces={"users": [{"exclusive": True, "regex": "@(unclosed"}]}),
            "not a valid regex",
        ),
        (registration(None, namespaces={"users": [{"regex": "@a.*"}]}), "exclusive"),
        (registration(None, namespaces={"users": [{"exclusive": True}]}), "regex"),
        (registration(None, namespaces={"users": "@a.*"}), "must be a list"),
        (registration(None, namespaces={"people": []}), "unknown namespaces"),
        (registration(None, rate_limited="no"), "rate_limited"),
        (registration(None, receive_ephemeral="yes"), "receive_ephemeral"),
        (registration(None, protocols="irc"), "protocols"),
        (registration(None, hs_token="as-secret-token"), "must differ"),
        ("just a string", "mapping"),
    ],
)
def test_unusable_registrations_are_refused(data: Any, message: str) -> None:
    with pytest.raises(RegistrationError) as e:
        parse_registration(data, "test", "bridge.yaml")
    assert "bridge.yaml" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize(
    ("second", "what"),
    [
        ({"as_token": "other-as", "hs_token": "other-hs", "sender_localpart": "b2"}, "id"),
        ({"id": "b2", "hs_token": "other-hs", "sender_localpart": "b2"}, "as_token"),
        ({"id": "b2", "as_token": "other-as", "sender_localpart": "b2"}, "hs_token"),
        ({"id": "b2", "as_token": "other-as", "hs_token": "other-hs"}, "sender_localpart"),
    ],
)
def test_two_registrations_may_not_share(tmp_path: Path, second: dict[str, Any], what: str) -> None:
    first = write_registration(tmp_path / "a.yaml", registration(None))
    other = write_registration(tmp_path / "b.yaml", registration(None, **second))
    with pytest.raises(RegistrationError) as e:
        load_registrations([first, other], "test")
    assert f"share the same {what}" in str(e.value)
    assert "a.yaml" in str(e.value) and "b.yaml" in str(e.value)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("id: [unclosed")
    with pytest.raises(RegistrationError, match="bad.yaml"):
        load_registrations([str(tmp_path / "bad.yaml")], "test")
    with pytest.raises(RegistrationError, match="missing.yaml"):
        load_registrations([str(tmp_path / "missing.yaml")], "test")


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    write_registration(tmp_path / "bridge.yaml", registration(None))
    (tmp_path / "homeserver.yaml").write_text("app_service_config_files: [bridge.yaml]\n")
    config = load_config(tmp_path / "homeserver.yaml", environ={})
    assert config.app_service_config_files == (str(tmp_path / "bridge.yaml"),)
    assert len(load_registrations(config.app_service_config_files, "test")) == 1


def test_run_refuses_to_start_with_a_bad_registration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_registration(
        tmp_path / "bridge.yaml",
        registration(None, namespaces={"users": [{"exclusive": True, "regex": "["}]}),
    )
    (tmp_path / "homeserver.yaml").write_text(
        "server_name: test\ndata_dir: data\napp_service_config_files: [bridge.yaml]\n"
    )
    assert issubclass(RegistrationError, ConfigError)
    assert main(["--config", str(tmp_path / "homeserver.yaml"), "run"]) == 2
    err = capsys.readouterr().err
    assert "bridge.yaml" in err and "not a valid regex" in err
