"""The spec's OAuth 2.0 API: metadata, client registration, grants, tokens (issue 23)."""
