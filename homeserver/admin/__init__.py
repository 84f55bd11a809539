"""The server's administrators' services: the admin API (Synapse's paths and shapes) and
account moderation (issue 22)."""
