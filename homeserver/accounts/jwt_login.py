"""``org.matrix.login.jwt``: a JSON Web Token from the operator's identity system names the
account that signs in (docs/sign-in.md).

PyJWT checks the signature, the algorithm (only the configured ones: never ``none``), the
issuer and the audience; the times (``exp``, ``nbf``) are checked here against the server's
clock, so that tests can move it.
"""

from __future__ import annotations

from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.config import JwtLoginConfig
from homeserver.core.errors import Codes, MatrixError

LOGIN_JWT = "org.matrix.login.jwt"


def _refused(reason: str) -> MatrixError:
    return MatrixError(Codes.FORBIDDEN, f"JWT validation failed: {reason}")


class JwtLogin:
    def __init__(self, config: JwtLoginConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._key: Any
        if config.public_key is not None:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self._key = load_pem_public_key(config.public_key.encode())
        else:
            assert config.secret is not None  # the config's validator
            self._key = config.secret

    @property
    def create_accounts(self) -> bool:
        return self._config.create_accounts

    def subject_of(self, token: str) -> str:
        """The subject claim of a valid token; ``M_FORBIDDEN`` saying why otherwise."""
        # PyJWT (with cryptography, ~15 MB) is imported by the first JWT login, not at
        # start-up: most servers never configure it.
        import jwt

        config = self._config
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=list(config.algorithms),
                audience=list(config.audiences) or None,
                issuer=config.issuer,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss"] if config.issuer is not None else [],
                },
            )
        except jwt.InvalidSignatureError as e:
            raise _refused("bad signature") from e
        except jwt.InvalidAlgorithmError as e:
            raise _refused("algorithm not allowed") from e
        except jwt.MissingRequiredClaimError as e:
            raise _refused(f"missing claim {e.claim!r}") from e
        except jwt.InvalidAudienceError as e:
            raise _refused("wrong audience") from e
        except jwt.InvalidIssuerError as e:
            raise _refused("wrong issuer") from e
        except jwt.DecodeError as e:
            raise _refused("not a valid token") from e
        except jwt.InvalidTokenError as e:
            raise _refused(str(e) or "invalid token") from e
        now = self._clock.now_ms() / 1000
        leeway = config.leeway_seconds
        exp = claims.get("exp")
        if exp is not None:
            if not _is_number(exp):
                raise _refused("exp is not a number")
            if exp <= now - leeway:
                raise _refused("token has expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_number(nbf):
                raise _refused("nbf is not a number")
            if nbf > now + leeway:
                raise _refused("token is not yet valid")
        subject = claims.get(config.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise _refused(f"claim {config.subject_claim!r} is missing or not a string")
        return subject


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
