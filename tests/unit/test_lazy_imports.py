"""Libraries that only some deployments use are imported when configured, not at start-up:
each costs megabytes in every worker (issue 24, the memory floor)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# redis-py (pulls in cryptography), PyJWT (with cryptography), asyncpg, aiosmtplib.
OPTIONAL = ("redis", "jwt", "cryptography", "asyncpg", "aiosmtplib")

_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from homeserver.core.config import parse_config
    from homeserver.lifecycle import running_homeserver

    async def main() -> None:
        config = parse_config(json.loads(sys.argv[1]))
        async with running_homeserver(config) as hs:
            assert hs.redis_bus is None
            print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[2:])))

    asyncio.run(main())
    """
)


def _loaded_after_start(tmp_path: Path, config: dict[str, object]) -> list[str]:
    """The optional libraries a server started with ``config`` (SQLite) has imported."""
    data = {
        "server_name": "test",
        "data_dir": str(tmp_path),
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'hs.db'}"},
        **config,
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(data), *OPTIONAL],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_a_single_sqlite_server_imports_none_of_the_optional_libraries(tmp_path: Path) -> None:
    assert _loaded_after_start(tmp_path, {}) == []


def test_a_configured_jwt_public_key_loads_cryptography(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    loaded = _loaded_after_start(
        tmp_path,
        {"jwt_login": {"enabled": True, "public_key": pem, "algorithms": ["ES256"]}},
    )
    assert "cryptography" in {m.split(".")[0] for m in loaded}
