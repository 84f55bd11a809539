"""The server's own keys: the ed25519 signing key that signs local events (and, with
federation, the keys of other servers)."""
