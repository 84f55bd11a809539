"""The federation services, built together from the config for the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.core.clock import Clock
from homeserver.core.config import HomeserverConfig
from homeserver.crypto.signing import SigningKey
from homeserver.federation.auth import FederationAuthenticator
from homeserver.federation.client import FederationClient, ssl_context
from homeserver.federation.discovery import (
    DnsSrvLookup,
    HttpsWellKnownFetch,
    ServerResolver,
    WellKnownResolver,
)
from homeserver.federation.keyring import Keyring
from homeserver.federation.local_keys import LocalKeys, load_old_verify_keys, old_keys_path
from homeserver.federation.policy import ServerPolicy
from homeserver.federation.queries import FederationQueries
from homeserver.net.outbound import Outbound, OutboundClient
from homeserver.storage.database import Database
from homeserver.storage.server_keys import ServerKeyStore


@dataclass(frozen=True, slots=True)
class FederationServices:
    policy: ServerPolicy
    local_keys: LocalKeys
    resolver: ServerResolver
    client: FederationClient
    keyring: Keyring
    auth: FederationAuthenticator
    queries: FederationQueries
    well_known_client: OutboundClient

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.well_known_client.aclose()


def build_federation(
    config: HomeserverConfig,
    db: Database,
    signing_key: SigningKey,
    clock: Clock,
    outbound: Outbound,
    server_resolver: ServerResolver | None = None,
) -> FederationServices:
    """Server identity, discovery, the signing client and request authentication.
    ``server_resolver`` replaces discovery (tests)."""
    fed = config.federation
    policy = ServerPolicy(fed.enabled, fed.allow_servers, fed.deny_servers)
    local_keys = LocalKeys(
        config.server_name,
        signing_key,
        load_old_verify_keys(old_keys_path(config.signing_key_file)),
        clock,
        fed.key_validity_ms,
    )
    tls = ssl_context(fed.tls_ca_bundle)
    timeout_s = fed.request_timeout_ms / 1000
    # Redirects of the well-known are followed (spec), each hop checked like the first.
    well_known_client = outbound.client(
        timeout_s=timeout_s, max_redirects=5, verify=tls, user_agent="homeserver"
    )
    resolver = server_resolver or ServerResolver(
        WellKnownResolver(HttpsWellKnownFetch(well_known_client), clock), DnsSrvLookup()
    )
    client = FederationClient(local_keys, resolver, outbound, policy, tls=tls, timeout_s=timeout_s)
    keyring = Keyring(
        local_keys,
        ServerKeyStore(db),
        client,
        policy,
        clock,
        trusted_key_servers=fed.trusted_key_servers,
        denied_verify_keys=fed.denied_verify_keys,
    )
    return FederationServices(
        policy=policy,
        local_keys=local_keys,
        resolver=resolver,
        client=client,
        keyring=keyring,
        auth=FederationAuthenticator(config.server_name, keyring, policy, clock),
        queries=FederationQueries(client),
        well_known_client=well_known_client,
    )
