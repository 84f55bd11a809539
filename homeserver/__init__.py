"""A Matrix homeserver: config, CLI, app factory, domain services, storage and bus."""
