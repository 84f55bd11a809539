"""Dynamic client registration (RFC 7591) with the spec's client metadata rules."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from homeserver.core.types import JsonDict
from homeserver.oauth.errors import OAuthError

GRANT_AUTHORIZATION_CODE = "authorization_code"
GRANT_REFRESH_TOKEN = "refresh_token"
GRANT_DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
SUPPORTED_GRANTS = frozenset({GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN, GRANT_DEVICE_CODE})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_LOCALISED_URIS = ("logo_uri", "tos_uri", "policy_uri")
_MAX_URI = 2048


def _invalid(description: str, error: str = "invalid_client_metadata") -> OAuthError:
    return OAuthError(error, description)


def _is_subdomain(host: str, base: str) -> bool:
    return host == base or host.endswith("." + base)


def _https_host(uri: Any, name: str) -> str:
    if not isinstance(uri, str) or not uri or len(uri) > _MAX_URI:
        raise _invalid(f"{name} must be a URI")
    parts = urlsplit(uri)
    if parts.scheme != "https" or not parts.hostname:
        raise _invalid(f"{name} must be an https URI")
    if parts.username is not None or parts.password is not None:
        raise _invalid(f"{name} must not hold a user or password")
    if parts.fragment:
        raise _invalid(f"{name} must not have a fragment")
    return parts.hostname


def _check_redirect_uri(uri: Any, client_host: str, application_type: str) -> None:
    if not isinstance(uri, str) or not uri or len(uri) > _MAX_URI:
        raise _invalid("each redirect URI must be a string", "invalid_redirect_uri")
    parts = urlsplit(uri)
    if "#" in uri:
        raise _invalid("a redirect URI must not have a fragment", "invalid_redirect_uri")
    if parts.scheme == "https":
        try:
            host = _https_host(uri, "redirect URI")
        except OAuthError as e:
            raise _invalid(e.description, "invalid_redirect_uri") from e
        if not _is_subdomain(host, client_host):
            raise _invalid(
                "an https redirect URI must be on the client URI's host or a subdomain",
                "invalid_redirect_uri",
            )
        return
    if application_type != "native":
        raise _invalid("a web client's redirect URIs must use https", "invalid_redirect_uri")
    if parts.scheme == "http":
        if parts.netloc not in LOOPBACK_HOSTS:
            raise _invalid(
                "an http redirect URI must be localhost, 127.0.0.1 or [::1] without a port",
                "invalid_redirect_uri",
            )
        return
    # A private-use scheme: the client URI's host reversed, then more if it likes.
    reversed_host = ".".join(reversed(client_host.split(".")))
    if not (parts.scheme == reversed_host or parts.scheme.startswith(reversed_host + ".")):
        raise _invalid(
            f"a private-use scheme must start with {reversed_host!r}", "invalid_redirect_uri"
        )
    if uri[len(parts.scheme) + 1 :].startswith("//"):
        raise _invalid(
            "a private-use scheme redirect URI must have no authority", "invalid_redirect_uri"
        )


def validate_client_metadata(body: JsonDict) -> JsonDict:
    """The metadata kept for a new client; ``OAuthError`` naming the first problem."""
    client_host = _https_host(body.get("client_uri"), "client_uri")
    for name in body:
        base = name.split("#", 1)[0]
        if base in _LOCALISED_URIS:
            host = _https_host(body[name], name)
            if not _is_subdomain(host, client_host):
                raise _invalid(f"{name} must be on the client URI's host or a subdomain")
    application_type = body.get("application_type", "web")
    if application_type not in ("web", "native"):
        raise _invalid("application_type must be web or native")
    redirect_uris = body.get("redirect_uris", [])
    if not isinstance(redirect_uris, list) or len(redirect_uris) > 20:
        raise _invalid("redirect_uris must be a list of at most 20 URIs", "invalid_redirect_uri")
    for uri in redirect_uris:
        _check_redirect_uri(uri, client_host, application_type)
    grant_types = body.get("grant_types", [GRANT_AUTHORIZATION_CODE])
    if not isinstance(grant_types, list) or not all(isinstance(g, str) for g in grant_types):
        raise _invalid("grant_types must be a list of strings")
    unsupported = sorted(set(grant_types) - SUPPORTED_GRANTS)
    if unsupported:
        raise _invalid(f"unsupported grant types: {unsupported}")
    if GRANT_AUTHORIZATION_CODE in grant_types and not redirect_uris:
        raise _invalid("the authorization code grant needs redirect_uris", "invalid_redirect_uri")
    code_grant = GRANT_AUTHORIZATION_CODE in grant_types
    response_types = body.get("response_types", ["code"] if code_grant else [])
    if response_types != (["code"] if code_grant else []):
        raise _invalid('response_types must be ["code"] with the authorization code grant only')
    method = body.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise _invalid("only public clients (token_endpoint_auth_method none) are supported")
    client_name = body.get("client_name")
    if client_name is not None and (not isinstance(client_name, str) or len(client_name) > 200):
        raise _invalid("client_name must be a string of at most 200 characters")
    kept: JsonDict = {
        "client_uri": body["client_uri"],
        "application_type": application_type,
        "redirect_uris": redirect_uris,
        "grant_types": grant_types,
        "response_types": response_types,
        "token_endpoint_auth_method": "none",
    }
    for name, value in body.items():
        base = name.split("#", 1)[0]
        if base in ("client_name", *_LOCALISED_URIS) and isinstance(value, str):
            kept[name] = value
    return kept


def redirect_uri_matches(registered: list[str], given: str) -> bool:
    """Exact match; for a loopback http URI any port (spec, RFC 8252 section 7.3)."""
    if given in registered:
        return True
    parts = urlsplit(given)
    if parts.scheme != "http" or parts.port is None:
        return False
    host = parts.netloc.rsplit(":", 1)[0]
    if host not in LOOPBACK_HOSTS:
        return False
    without_port = parts._replace(netloc=host).geturl()
    return without_port in registered
