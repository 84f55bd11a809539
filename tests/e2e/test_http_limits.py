"""What the HTTP layer refuses is a JSON Matrix error too (homeserver/web/http_protocol.py)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeserver.web.http_protocol import MAX_HEADER_BYTES, MAX_TARGET_BYTES
from tests.e2e.conftest import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("http_limits")), None)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _exchange(server: ServerProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        try:
            s.sendall(request)
        except OSError:
            pass  # the server may answer and close before it has read everything
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _assert_matrix_error(answer: tuple[int, dict[str, str], bytes], status: int) -> None:
    got_status, headers, body = answer
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["errcode"].startswith("M_"), error


def test_long_path(server: ServerProcess) -> None:
    request = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    _assert_matrix_error(_exchange(server, request), 414)
    # At the limit, the app answers (an unknown endpoint).
    path = b"/_matrix/client/v3/x" + b"a" * (MAX_TARGET_BYTES - 20)
    status, _, body = _exchange(server, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, json.loads(body)["errcode"]) == (404, "M_UNRECOGNIZED")


def test_large_headers(server: ServerProcess) -> None:
    big = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nX-Big: "
    _assert_matrix_error(_exchange(server, big + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n\r\n"), 431)
    many = b"".join(b"X-%d: a\r\n" % i for i in range(MAX_HEADER_BYTES // 8))
    _assert_matrix_error(
        _exchange(server, b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"),
        431,
    )
    status, _, _ = _exchange(
        server, b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200


def test_malformed_request(server: ServerProcess) -> None:
    _assert_matrix_error(_exchange(server, b"BLAH\r\n\r\n"), 400)
