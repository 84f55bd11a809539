"""Leaf modules every layer uses: IDs, errors, stream names, clock, config, JSON rules,
rate limits, logging. They import nothing else from the homeserver."""
