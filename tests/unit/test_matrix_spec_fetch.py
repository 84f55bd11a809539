"""Fetching the pinned Matrix spec on a machine that has no copy: download, check, unpack.

A loopback HTTP server serves archives built here, laid out as GitHub's tag archives are
(one top folder): a good one, one whose content differs from the pin, and one that tries to
write outside the cache.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import matrix_spec
from tests.matrix_spec import SpecUnavailable, fetch_spec, tree_digest

TOP = "matrix-spec-9.9"
FILES = {
    "data/api/client-server/sync.yaml": b"openapi: 3.1.0\n",
    "data/api/client-server/definitions/event.yaml": b"type: object\n",
    "data/event-schemas/schema/m.room.message.yaml": b"type: object\n",
    "README.rst": b"not a definition: left out\n",
}


def build_archive(files: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return out.getvalue()


def expected_digest(tmp_path: Path) -> str:
    root = tmp_path / "expected"
    for name, content in FILES.items():
        if name.startswith("data/"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
    return tree_digest(root)


class Served:
    def __init__(self) -> None:
        self.body = b""
        self.requests = 0


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            served.requests += 1
            if self.path != "/spec.tar.gz":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(served.body)))
            self.end_headers()
            self.wfile.write(served.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_fetches_checks_and_caches(server: tuple[str, Served], tmp_path: Path) -> None:
    base, served = server
    served.body = build_archive(FILES)
    cache = tmp_path / "cache"
    pin = expected_digest(tmp_path)
    tarball_pin = hashlib.sha256(served.body).hexdigest()
    got = fetch_spec(
        f"{base}/spec.tar.gz",
        tree_sha256=pin,
        tarball_sha256=tarball_pin,
        cache=cache,
        version="v9.9",
    )
    assert got == cache / "matrix-spec-v9.9"
    assert (got / "data/api/client-server/sync.yaml").read_bytes() == b"openapi: 3.1.0\n"
    assert not (got / "README.rst").exists()
    assert [p.name for p in cache.iterdir()] == ["matrix-spec-v9.9"]  # no work folder left
    # Once cached, it is not downloaded again.
    assert fetch_spec(f"{base}/spec.tar.gz", tree_sha256=pin, cache=cache, version="v9.9") == got
    assert served.requests == 1


def test_content_that_differs_from_the_pin_is_refused(
    server: tuple[str, Served], tmp_path: Path
) -> None:
    base, served = server
    pin = expected_digest(tmp_path)
    served.body = build_archive({**FILES, "data/api/client-server/sync.yaml": b"tampered\n"})
    cache = tmp_path / "cache"
    with pytest.raises(SpecUnavailable, match="does not match its pin") as e:
        fetch_spec(f"{base}/spec.tar.gz", tree_sha256=pin, cache=cache, version="v9.9")
    assert "MATRIX_SPEC_DIR" in str(e.value)
    assert list(cache.iterdir()) == []


def test_an_archive_that_differs_from_its_digest_is_not_opened(
    server: tuple[str, Served], tmp_path: Path
) -> None:
    base, served = server
    served.body = build_archive(FILES)
    corrupted = bytearray(served.body)
    corrupted[len(corrupted) // 2] ^= 0xFF
    good_digest = hashlib.sha256(served.body).hexdigest()
    served.body = bytes(corrupted)
    cache = tmp_path / "cache"
    with pytest.raises(SpecUnavailable, match="pinned sha256"):
        fetch_spec(
            f"{base}/spec.tar.gz",
            tree_sha256=expected_digest(tmp_path),
            tarball_sha256=good_digest,
            cache=cache,
            version="v9.9",
        )
    assert list(cache.iterdir()) == []


def test_a_corrupted_archive_without_a_tarball_pin_fails_clearly(
    server: tuple[str, Served], tmp_path: Path
) -> None:
    base, served = server
    served.body = build_archive(FILES)[:200]  # cut short
    with pytest.raises(SpecUnavailable, match="not a readable .tar.gz"):
        fetch_spec(
            f"{base}/spec.tar.gz",
            tree_sha256=expected_digest(tmp_path),
            cache=tmp_path / "cache",
            version="v9.9",
        )


def test_members_outside_the_definitions_are_never_written(
    server: tuple[str, Served], tmp_path: Path
) -> None:
    base, served = server
    escape = tarfile.TarInfo(f"{TOP}/data/api/../../../escaped.txt")
    escape.size = 1
    link = tarfile.TarInfo(f"{TOP}/data/api/client-server/link.yaml")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    absolute = tarfile.TarInfo("/tmp/absolute-member.txt")
    absolute.size = 1
    served.body = build_archive(FILES, extra=[escape, link, absolute])
    got = fetch_spec(
        f"{base}/spec.tar.gz",
        tree_sha256=expected_digest(tmp_path),
        cache=tmp_path / "cache",
        version="v9.9",
    )
    assert not (got / "data/api/client-server/link.yaml").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not list(tmp_path.rglob("escaped.txt"))


def test_no_network_fails_with_what_to_do(server: tuple[str, Served], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(SpecUnavailable, match="Could not download") as e:
        fetch_spec(f"{base}/missing.tar.gz", tree_sha256="0" * 64, cache=tmp_path / "cache")
    assert "MATRIX_SPEC_DIR" in str(e.value) and "github.com" in str(e.value)


def test_spec_dir_falls_back_to_the_fetch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(matrix_spec.SPEC_DIR_ENV, raising=False)
    monkeypatch.setattr(matrix_spec, "_has_definitions", lambda root: False)
    fetched: list[bool] = []
    monkeypatch.setattr(matrix_spec, "fetch_spec", lambda: fetched.append(True) or tmp_path)
    assert matrix_spec.spec_dir() == tmp_path
    assert fetched == [True]


def test_the_pinned_digest_matches_the_copy_in_use() -> None:
    """The pin is the digest of the definitions the suite has been passing against."""
    root = matrix_spec.spec_dir()
    if not (root / "data" / "event-schemas").is_dir():
        pytest.skip("the spec in use has no data/event-schemas")
    assert tree_digest(root) == matrix_spec.SPEC_TREE_SHA256
