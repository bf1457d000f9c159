"""Dataset files on disk: where they go, whether they are still verified, installing, removing."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm.catalog.paths import resolve_inside
from dsm.domain.model import Dataset
from dsm.transfer.partfile import (
    discard_partial,
    read_sidecar,
    sidecar_path,
    target_lock,
    write_sidecar,
)

HASH_BLOCK = 4 << 20
RESET_FIELDS: dict[str, Any] = {
    "downloaded": False,
    "size": None,
    "checksum": None,
    "downloaded_at_ms": None,
    "file_mtime_ns": None,
    "download_progress": 0.0,
    "outdated": False,
    "error": None,
    "served_by": None,
}


def target(home: Path, ds: Dataset) -> Path:
    """The dataset's final path; ValueError when it would leave the home or is a folder."""
    path = resolve_inside(home, ds.local_path)
    if path.is_dir():  # checked before a .part is written beside it
        raise ValueError(
            f"local_path {ds.local_path!r} is an existing folder ({path}): "
            "move it away or give the dataset another local_path"
        )
    return path


def part_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def still_verified(home: Path, ds: Dataset) -> bool:
    """Cheap check: the file verified earlier is there with the same size and mtime stamp."""
    if not ds.downloaded or ds.size is None or ds.file_mtime_ns is None:
        return False
    try:
        st = target(home, ds).stat()
    except (OSError, ValueError):
        return False
    return st.st_size == ds.size and st.st_mtime_ns == ds.file_mtime_ns


def has_partial(home: Path, ds: Dataset) -> bool:
    try:
        return part_of(target(home, ds)).exists()
    except ValueError:
        return False


def integrity_problem(ds: Dataset, size: int, sha256: str) -> str | None:
    """Why the fetched bytes are not the dataset, or None. Names expected and actual values."""
    if ds.expected_size is not None and size != ds.expected_size:
        return f"size mismatch: expected {ds.expected_size} bytes, got {size}"
    if ds.expected_sha256 is not None and sha256 != ds.expected_sha256:
        return f"checksum mismatch: expected sha256 {ds.expected_sha256}, got {sha256}"
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Installed:
    size: int
    sha256: str
    mtime_ns: int


def install(path: Path, size: int, sha256: str) -> Installed:
    """Atomically move the verified `.part` into place.

    The sidecar keeps the verified hash until the store has recorded the install
    (`forget_install`), so a crash in between is recovered without a download.
    """
    part = part_of(path)
    write_sidecar(part, {"installed_sha256": sha256, "size": size})
    os.replace(part, path)
    _fsync_dir(path.parent)
    return Installed(size, sha256, path.stat().st_mtime_ns)


def installed_before_crash(path: Path) -> Installed | None:
    """A copy that a run verified and moved into place, dying before the store heard of it."""
    part = part_of(path)
    meta = read_sidecar(part)
    sha = meta.get("installed_sha256")
    if not isinstance(sha, str) or part.exists() or not path.exists():
        return None
    st = path.stat()
    if st.st_size != meta.get("size") or sha256_of(path) != sha:
        return None
    return Installed(st.st_size, sha, st.st_mtime_ns)


def forget_install(path: Path) -> None:
    sidecar_path(part_of(path)).unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def rehash(home: Path, ds: Dataset) -> tuple[str | None, int | None]:
    """Full verification on demand: (problem or None, the file's mtime stamp)."""
    try:
        path = target(home, ds)
        st = path.stat()
        actual = sha256_of(path)
    except (OSError, ValueError) as exc:
        return f"cannot verify: {exc}", None
    want = ds.expected_sha256 or ds.checksum
    if st.st_size != (ds.expected_size if ds.expected_size is not None else ds.size):
        return f"size mismatch on disk: expected {ds.size} bytes, found {st.st_size}", None
    if want and actual != want:
        return f"checksum mismatch on disk: expected sha256 {want}, got {actual}", None
    return None, st.st_mtime_ns


def remove(path: Path) -> None:
    """Remove the file and any partial download of it (the path is already inside the home)."""
    part = part_of(path)
    with target_lock(part):  # a canceled transfer may still be finishing its last write
        path.unlink(missing_ok=True)
        discard_partial(part)
