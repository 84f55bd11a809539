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
