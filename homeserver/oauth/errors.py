"""The OAuth 2.0 error answer (RFC 6749 section 5.2): ``error`` and ``error_description``,
a protocol of its own beside the Matrix errors of the client API."""

from __future__ import annotations


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
