"""Where the tests find the Matrix spec's definitions (``data/api``, ``data/event-schemas``).

In order: ``$MATRIX_SPEC_DIR``; a ``shared/matrix-spec`` checkout beside the repository; else
the pinned release of matrix-org/matrix-spec, downloaded once into a cache folder
(``$XDG_CACHE_HOME`` or ``~/.cache``, then ``homeserver-tests/matrix-spec-<version>``) and
checked before use. A download that fails or does not match its pin stops with a message
that says what to do; nothing unchecked is ever unpacked into the cache.

Two pins: ``SPEC_TREE_SHA256``, a digest of the definitions themselves (every file under
``data/api`` and ``data/event-schemas``, by path and content; see ``tree_digest``), which is
what the tests rely on and what a re-compressed archive cannot change; and
``SPEC_TARBALL_SHA256``, the digest of the archive as GitHub serves it, checked before the
archive is opened once it is filled in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

SPEC_DIR_ENV = "MATRIX_SPEC_DIR"
SPEC_VERSION = "v1.19"
SPEC_URL = f"https://github.com/matrix-org/matrix-spec/archive/refs/tags/{SPEC_VERSION}.tar.gz"
# tree_digest() of v1.19 (commit b9c3d5ed3b0b46b2b025b4a427119036bc9ed71a).
SPEC_TREE_SHA256 = "c866a1970498966ba358a05fd6c779f799a632478a501a51f39d61bde6f1f456"
# sha256 of the file at SPEC_URL. None until someone with access to github.com fills it in
# (`curl -sL <SPEC_URL> | sha256sum`); until then the unpacked tree is what is checked.
SPEC_TARBALL_SHA256: str | None = None
SPEC_DIRS = ("data/api", "data/event-schemas")
DOWNLOAD_TIMEOUT_S = 60.0
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # the release archive is a few MB
_CHUNK = 1 << 16


class SpecUnavailable(RuntimeError):
    """The spec definitions are neither here nor obtainable."""


def spec_dir() -> Path:
    """The root of a matrix-spec tree (it has ``data/api/client-server``)."""
    override = os.environ.get(SPEC_DIR_ENV)
    if override:
        return Path(override).resolve()
    beside = Path(__file__).resolve().parents[2] / "shared" / "matrix-spec"
    if _has_definitions(beside):
        return beside
    return fetch_spec()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "homeserver-tests"


def fetch_spec(
    url: str = SPEC_URL,
    *,
    tree_sha256: str = SPEC_TREE_SHA256,
    tarball_sha256: str | None = SPEC_TARBALL_SHA256,
    cache: Path | None = None,
    version: str = SPEC_VERSION,
) -> Path:
    """The cached spec tree of ``version``, downloaded from ``url`` and checked on first use."""
    cache = cache if cache is not None else cache_root()
    target = cache / f"matrix-spec-{version}"
    if _has_definitions(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".matrix-spec-{version}-", dir=cache))
    try:
        archive = work / "spec.tar.gz"
        _download(url, archive, tarball_sha256)
        unpacked = work / "tree"
        _unpack_definitions(archive, unpacked, url)
        found = tree_digest(unpacked)
        if found != tree_sha256:
            raise SpecUnavailable(
                f"The Matrix spec from {url} does not match its pin (definitions digest"
                f" {found}, expected {tree_sha256}). Nothing was cached. {_ADVICE}"
            )
        try:
            unpacked.rename(target)  # atomic: a concurrent run either wins or finds it there
        except OSError:
            if not _has_definitions(target):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


_ADVICE = (
    f"The schema tests need the Matrix spec {SPEC_VERSION} definitions: set {SPEC_DIR_ENV}"
    " to a checkout of https://github.com/matrix-org/matrix-spec at that tag, or let the"
    " tests download it (network access to github.com)."
)


def tree_digest(root: Path) -> str:
    """sha256 over ``<path>\\0<sha256 of content>\\n`` of every file under SPEC_DIRS, sorted
    by path (POSIX, relative to ``root``)."""
    entries: list[tuple[str, str]] = []
    for sub in SPEC_DIRS:
        base = root / sub
        if not base.is_dir():
            raise SpecUnavailable(f"{base} is missing from the Matrix spec tree. {_ADVICE}")
        for path in base.rglob("*"):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries.append((path.relative_to(root).as_posix(), digest))
    total = hashlib.sha256()
    for name, digest in sorted(entries):
        total.update(f"{name}\0{digest}\n".encode())
    return total.hexdigest()


def _has_definitions(root: Path) -> bool:
    return (root / "data" / "api" / "client-server").is_dir()


def _download(url: str, into: Path, sha256: str | None) -> None:
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with into.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise SpecUnavailable(
                            f"{url} is larger than {MAX_DOWNLOAD_BYTES} bytes. {_ADVICE}"
                        )
                    digest.update(chunk)
                    out.write(chunk)
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response's socket
        raise SpecUnavailable(f"Could not download {url}: {e}. {_ADVICE}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SpecUnavailable(f"Could not download {url}: {e}. {_ADVICE}") from e
    if sha256 is not None and digest.hexdigest() != sha256:
        raise SpecUnavailable(
            f"{url} does not match its pinned sha256 (got {digest.hexdigest()}, expected"
            f" {sha256}). Nothing was cached. {_ADVICE}"
        )


def _unpack_definitions(archive: Path, into: Path, url: str) -> None:
    """Unpack SPEC_DIRS (below the archive's one top folder) into ``into``: regular files and
    folders only, no path that leaves ``into``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = list(_definition_members(tar.getmembers()))
            if not members:
                raise SpecUnavailable(f"{url} holds no {' or '.join(SPEC_DIRS)}. {_ADVICE}")
            into.mkdir()
            for member, relative in members:
                destination = into.joinpath(*relative.parts)
                if member.isdir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with source, destination.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise SpecUnavailable(f"{url} is not a readable .tar.gz: {e}. {_ADVICE}") from e


def _definition_members(
    members: Iterable[tarfile.TarInfo],
) -> Iterable[tuple[tarfile.TarInfo, PurePosixPath]]:
    for member in members:
        if not (member.isfile() or member.isdir()):
            continue  # no links, devices or fifos
        parts = PurePosixPath(member.name).parts
        if len(parts) < 2 or any(p in ("", ".", "..") for p in parts) or parts[0] == "/":
            continue
        relative = PurePosixPath(*parts[1:])  # below "matrix-spec-1.19/"
        if any(relative.is_relative_to(d) for d in SPEC_DIRS):
            yield member, relative
