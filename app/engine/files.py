"""Dataset files on disk: where they go, whether they are still verified, installing, removing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dsm.catalog.paths import ARCHIVES_DIR, resolve_inside
from dsm.domain.model import Dataset
from dsm.engine import unpack
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
    "file_count": None,
    "unpacked_size": None,
}
MANIFEST = "manifest.json"


def local(home: Path, ds: Dataset) -> Path:
    """The dataset's path as the user sees it (for an unpacked dataset, the tree); ValueError
    when it would leave the home."""
    return resolve_inside(home, ds.local_path)


def target(home: Path, ds: Dataset) -> Path:
    """Where the downloaded, verified bytes live: `local_path`, or for a dataset that is
    unpacked, its archive under the home's .archives/ folder (outside the tree, so that a
    re-unpack needs no download). ValueError when local_path would leave the home."""
    path = local(home, ds)
    if ds.extract is None:
        return path
    return archive_dir(home, ds) / f"archive.{ds.extract}"


def archive_dir(home: Path, ds: Dataset) -> Path:
    return home.resolve() / ARCHIVES_DIR / ds.name  # names match [a-z0-9][a-z0-9._-]*


def part_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def still_verified(home: Path, ds: Dataset) -> bool:
    """Cheap check: the file verified earlier is there with the same size and mtime stamp
    (for an unpacked dataset: its archive, and the tree and its file list are in place)."""
    if not ds.downloaded or kept_archive(home, ds) is None:
        return False
    if ds.extract is None:
        return True
    try:
        return local(home, ds).exists() and (archive_dir(home, ds) / MANIFEST).exists()
    except ValueError:
        return False


def kept_archive(home: Path, ds: Dataset) -> Installed | None:
    """The verified file recorded in the row, when it is still there unchanged (size and
    mtime stamp); for an unpacked dataset, the archive a re-unpack starts from."""
    if ds.size is None or ds.file_mtime_ns is None or ds.checksum is None:
        return None
    try:
        st = target(home, ds).stat()
    except (OSError, ValueError):
        return None
    if st.st_size != ds.size or st.st_mtime_ns != ds.file_mtime_ns:
        return None
    return Installed(ds.size, ds.checksum, ds.file_mtime_ns)


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
    if ds.extract is not None:
        problem = _tree_problem(home, ds)
        if problem:
            return problem, None
    return None, st.st_mtime_ns


def remove(home: Path, ds: Dataset) -> None:
    """Remove the file and any partial download of it (its path is already checked to be
    inside the home); for an unpacked dataset also the tree, the archive and its file list."""
    path = target(home, ds)
    part = part_of(path)
    with target_lock(part):  # a canceled transfer may still be finishing its last write
        path.unlink(missing_ok=True)
        discard_partial(part)
        if ds.extract is not None:
            unpack.remove_tree(local(home, ds))
            shutil.rmtree(archive_dir(home, ds), ignore_errors=True)


# -- unpacked datasets: the file list recorded at unpack time ---------------------------
def write_manifest(home: Path, ds: Dataset, unpacked: list[unpack.Unpacked]) -> None:
    """Record the unpacked files beside the archive. A file, not the row: a tree of 100,000
    files would make every write of the store (one JSON document) slow."""
    folder = archive_dir(home, ds)
    tmp = folder / (MANIFEST + ".tmp")
    doc = {"kind": ds.extract, "files": [asdict(u) for u in unpacked]}
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)


def _tree_problem(home: Path, ds: Dataset) -> str | None:
    """Why the unpacked tree is not the one recorded at unpack time, or None."""
    try:
        doc = json.loads((archive_dir(home, ds) / MANIFEST).read_text(encoding="utf-8"))
        recorded = [unpack.Unpacked(**u) for u in doc["files"]]
        tree = local(home, ds)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"cannot verify the unpacked files: {exc}"
    if len(recorded) != ds.file_count:
        return f"unpacked file list holds {len(recorded)} files, expected {ds.file_count}"
    for entry in recorded:
        path = tree if ds.extract == "gz" else tree / entry.path
        try:
            if path.is_symlink() or not path.is_file():
                return f"unpacked file {entry.path!r} is missing or not a regular file"
            size = path.stat().st_size
            if size != entry.size:
                return f"unpacked file {entry.path!r}: expected {entry.size} bytes, found {size}"
            if sha256_of(path) != entry.sha256:
                return f"unpacked file {entry.path!r}: checksum mismatch"
        except OSError as exc:
            return f"unpacked file {entry.path!r}: {exc.strerror or exc}"
    return None
