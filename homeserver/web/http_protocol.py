"""uvicorn's HTTP/1.1 protocol with limits on the request head and Matrix errors for what
it refuses before the app sees the request.

uvicorn answers a request it cannot parse with a plain-text 400, and its httptools parser
puts no bound on header size. Here the request target is at most ``MAX_TARGET_BYTES`` (414)
and the header fields at most ``MAX_HEADER_BYTES`` in all (431); both answers, and the 400
of a malformed request, are Matrix errors in JSON (docs/security.md). Behind a reverse proxy,
the proxy's own limits answer first (nginx ``large_client_header_buffers``).
"""

from __future__ import annotations

import asyncio
import http
import logging

import orjson

from homeserver.core.errors import Codes

logger = logging.getLogger(__name__)

# The path and query string of one request. Matrix IDs are at most 255 bytes (three times
# that percent-encoded), and a sync filter given inline as JSON in the query is the longest
# target clients send; nginx's default buffer for a request line is 8 KiB.
MAX_TARGET_BYTES = 16 * 1024
# All header lines of one request, as sent: an access token, cookies and a few dozen
# ordinary headers fit many times over.
MAX_HEADER_BYTES = 64 * 1024


def error_bytes(
    status: int, code: Codes, message: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A complete HTTP/1.1 response with a Matrix error body; the connection closes after."""
    body = orjson.dumps({"errcode": code, "error": message})
    phrase = http.HTTPStatus(status).phrase.encode()
    head = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
    head.extend(name + b": " + value + b"\r\n" for name, value in default_headers)
    head.append(b"content-type: application/json\r\n")
    head.append(b"content-length: %d\r\n" % len(body))
    head.append(b"connection: close\r\n\r\n")
    return b"".join(head) + body


class _Refusal(Exception):
    def __init__(self, status: int, code: Codes, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _protocol_class() -> type[asyncio.Protocol]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        return _h11_class()

    class MatrixHttpToolsProtocol(HttpToolsProtocol):
        _refusal: _Refusal | None = None
        _header_bytes = 0

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._refusal = None
            self._header_bytes = 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > MAX_TARGET_BYTES:
                # Raised inside the parser's callback: httptools stops and data_received
                # answers through send_400_response, which sends this instead.
                self._refusal = _Refusal(
                    414, Codes.TOO_LARGE, f"Request target is longer than {MAX_TARGET_BYTES} bytes"
                )
                raise self._refusal

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF, as sent
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refusal = _Refusal(
                    431,
                    Codes.TOO_LARGE,
                    f"Request headers are larger than {MAX_HEADER_BYTES} bytes",
                )
                raise self._refusal
            super().on_header(name, value)

        def send_400_response(self, msg: str) -> None:
            refusal = self._refusal or _Refusal(400, Codes.UNKNOWN, "Invalid HTTP request")
            self.transport.write(
                error_bytes(
                    refusal.status,
                    refusal.code,
                    refusal.message,
                    list(self.server_state.default_headers),
                )
            )
            self.transport.close()

    return MatrixHttpToolsProtocol


def _h11_class() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class MatrixH11Protocol(H11Protocol):
        """h11 bounds the head itself (``h11_max_incomplete_event_size``): over it, or for
        anything malformed, the one answer is a 400, here in JSON."""

        def send_400_response(self, msg: str) -> None:
            self.transport.write(
                error_bytes(
                    400,
                    Codes.UNKNOWN,
                    "Invalid HTTP request (malformed, or its head is too large)",
                    list(self.server_state.default_headers),
                )
            )
            self.transport.close()

    return MatrixH11Protocol


def http_protocol_class() -> type[asyncio.Protocol]:
    """The protocol class to give ``uvicorn.run(http=...)``."""
    return _protocol_class()
