"""``/sync``: what changed for a user since a token, waiting for it when nothing did."""
