"""Federation services: our server's keys and the keyring of other servers' keys, server
discovery, the signing federation client and the X-Matrix authenticator of inbound requests.
Routes live in the top-level ``federation`` package."""
