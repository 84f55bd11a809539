"""The config: defaults, the sample file, environment overrides, typos refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from homeserver.core.config import (
    ConfigError,
    HomeserverConfig,
    RateLimit,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_sample_config_is_the_defaults() -> None:
    sample = load_config(ROOT / "config" / "homeserver.yaml", environ={})
    defaults = HomeserverConfig()
    assert sample.model_dump(exclude={"data_dir"}) == defaults.model_dump(exclude={"data_dir"})


def _leaf_keys(model: type[BaseModel]) -> list[str]:
    """Every key a config file can set; a rate limit's {per_second, burst} is one value."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not RateLimit:
            out.extend(_leaf_keys(sub))
        out.append(name)
    return out


def test_every_key_is_documented() -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    for key in _leaf_keys(HomeserverConfig):
        assert f"`{key}`" in doc, key


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "hs.yaml"
    path.write_text("server_name: example.org\nlisten: {port: 9000}\n")
    config = load_config(
        path,
        environ={
            "HS_LISTEN__PORT": "8448",
            "HS_DATABASE__URL": "postgresql+asyncpg://h/db",
            "HS_REGISTRATION__ENABLED": "true",
        },
    )
    assert config.listen.port == 8448
    assert config.database.url == "postgresql+asyncpg://h/db"
    assert config.registration.enabled is True
    assert config.server_name == "example.org"
    assert Path(config.data_dir) == tmp_path / "data"


def test_outbound_allow_list_and_the_keys_it_replaced() -> None:
    config = parse_config({"outbound": {"allow_addresses": ["10.0.5.0/24", "127.0.0.1"]}})
    assert config.outbound.allow_addresses == ("10.0.5.0/24", "127.0.0.1")
    with pytest.raises(ConfigError, match="not-a-cidr"):
        parse_config({"outbound": {"allow_addresses": ["not-a-cidr"]}})
    # The old keys at their defaults still load; set, they say where the setting went.
    parse_config(
        {
            "push": {"allow_private_addresses": False},
            "media": {"url_preview": {"ip_range_allowlist": []}},
        }
    )
    for data in (
        {"push": {"allow_private_addresses": True}},
        {"media": {"url_preview": {"ip_range_allowlist": ["127.0.0.1/32"]}}},
    ):
        with pytest.raises(ConfigError, match="replaced by outbound.allow_addresses"):
            parse_config(data)


def test_sqlite_path_is_inside_the_data_dir(tmp_path: Path) -> None:
    config = parse_config({"data_dir": str(tmp_path)})
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/homeserver.db"


@pytest.mark.parametrize(
    "data",
    [
        {"server_nme": "typo"},
        {"listen": {"port": 70000}},
        {"server_name": "bad name!"},
        {"registration": {"enabled": "perhaps"}},
    ],
)
def test_bad_config_refused(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_config(data)
