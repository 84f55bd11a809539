"""Authentication of inbound federation requests: the ``X-Matrix`` Authorization header
(spec, "Request Authentication"), checked against the origin's keys through the keyring."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import is_valid_server_name
from homeserver.core.types import JsonDict
from homeserver.federation.keyring import Keyring, SignatureError
from homeserver.federation.policy import ServerPolicy

logger = logging.getLogger(__name__)

SCHEME = "x-matrix"
_WHITESPACE = " \t"


@dataclass(frozen=True, slots=True)
class XMatrix:
    origin: str
    destination: str | None
    key: str
    sig: str


def parse_auth_params(params: str) -> dict[str, str]:
    """RFC 9110 auth-params: ``name=value`` pairs separated by commas, spaces and tabs
    around them allowed, values quoted (with backslash escapes) or bare. A bare value may
    hold colons, as older servers send them. Names are lower-cased; ValueError if malformed."""
    out: dict[str, str] = {}
    i, n = 0, len(params)
    while i < n:
        while i < n and params[i] in _WHITESPACE + ",":
            i += 1
        if i >= n:
            break
        eq = params.find("=", i)
        if eq < 0:
            raise ValueError("parameter without a value")
        name = params[i:eq].strip(_WHITESPACE).lower()
        if not name or any(c in name for c in ' \t,"'):
            raise ValueError("bad parameter name")
        i = eq + 1
        while i < n and params[i] in _WHITESPACE:
            i += 1
        if i < n and params[i] == '"':
            i += 1
            value: list[str] = []
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted value")
                c = params[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise ValueError("unterminated escape")
                    value.append(params[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    value.append(c)
                    i += 1
            text = "".join(value)
            while i < n and params[i] in _WHITESPACE:
                i += 1
            if i < n and params[i] != ",":
                raise ValueError("garbage after a quoted value")
        else:
            end = params.find(",", i)
            end = n if end < 0 else end
            text = params[i:end].strip(_WHITESPACE)
            if any(c in text for c in ' \t"'):
                raise ValueError("bad bare value")
            i = end
        if name in out:
            raise ValueError(f"parameter {name} given twice")
        out[name] = text
    return out


def parse_x_matrix(header: str) -> XMatrix:
    """One ``Authorization: X-Matrix ...`` header; ValueError if it is not a valid one."""
    scheme, sep, params = header.strip(_WHITESPACE).partition(" ")
    if not sep or scheme.lower() != SCHEME:
        raise ValueError("not an X-Matrix authorization")
    values = parse_auth_params(params)
    origin, key, sig = values.get("origin"), values.get("key"), values.get("sig")
    if not origin or not key or not sig:
        raise ValueError("X-Matrix needs origin, key and sig")
    return XMatrix(origin, values.get("destination"), key, sig)


def _unauthorized(message: str) -> MatrixError:
    return MatrixError(Codes.UNAUTHORIZED, message, status=401)


class FederationAuthenticator:
    def __init__(
        self, server_name: str, keyring: Keyring, policy: ServerPolicy, clock: Clock
    ) -> None:
        self._server_name = server_name
        self._keyring = keyring
        self._policy = policy
        self._clock = clock

    async def authenticate(
        self, method: str, uri: str, authorizations: Sequence[str], content: Any | None
    ) -> str:
        """The origin of a request whose every X-Matrix header verifies; 401 M_UNAUTHORIZED
        otherwise, 403 M_FORBIDDEN for an origin we do not federate with."""
        if not authorizations:
            raise _unauthorized("Missing Authorization header")
        try:
            parsed = [parse_x_matrix(h) for h in authorizations]
        except ValueError as e:
            raise _unauthorized(f"Invalid Authorization header: {e}") from None
        origin = parsed[0].origin
        if any(p.origin != origin for p in parsed):
            raise _unauthorized("Authorization headers name different origins")
        if not is_valid_server_name(origin):
            raise _unauthorized("Invalid origin in Authorization header")
        for p in parsed:
            # spec: a destination other than ours is refused with 401; older servers may
            # leave it out, and sign with our name all the same.
            if p.destination is not None and p.destination != self._server_name:
                raise _unauthorized("Request is for another destination")
        signatures: dict[str, str] = {}
        for p in parsed:
            if signatures.setdefault(p.key, p.sig) != p.sig:
                raise _unauthorized("Two signatures for one key")
        if origin == self._server_name:
            raise _unauthorized("Request claims to come from this server")
        if not self._policy.allows(origin):
            raise MatrixError(Codes.FORBIDDEN, "Federation with this server is not allowed")
        signed: JsonDict = {
            "method": method,
            "uri": uri,
            "origin": origin,
            "destination": self._server_name,
            "signatures": {origin: signatures},
        }
        if content is not None:
            signed["content"] = content
        try:
            await self._keyring.verify_json_for_server(origin, signed, self._clock.now_ms())
        except SignatureError as e:
            logger.info("request signature refused", extra={"origin": origin, "error": str(e)})
            raise _unauthorized(f"Invalid signature: {e}") from None
        return origin
