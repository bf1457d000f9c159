"""Dataset files on disk: where they go, whether they are still verified, installing, removing."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsm.catalog.paths import ARCHIVES_DIR, Resolver, member_problem, resolved_home
from dsm.domain.hub import ManifestFile
from dsm.domain.model import Dataset
from dsm.errors import DiskError, DiskFull, Swapped
from dsm.transfer.http import Digest, Fetched, disk_error
from dsm.transfer.partfile import (
    FileId,
    discard_partial,
    file_id,
    open_own,
    read_sidecar,
    replace_own,
    sidecar_path,
    target_lock,
    write_sidecar,
)

if TYPE_CHECKING:
    from dsm.engine.unpack import Unpacked

HASH_BLOCK = 4 << 20
RESET_FIELDS: dict[str, Any] = {
    "downloaded": False,
    "size": None,
    "checksum": None,
    "downloaded_at_ms": None,
    "file_mtime_ns": None,
    "download_progress": 0.0,
    "outdated": False,
    "outdated_reason": None,
    "confirmed": True,
    "unconfirmed_reason": None,
    "error": None,
    "source_commit": None,
    "upstream_commit": None,
    "manifest": None,
    "served_by": None,
    "file_count": None,
    "unpacked_size": None,
}
MANIFEST = "manifest.json"  # an unpacked dataset's file list, beside its archive


def local(home: Path, ds: Dataset, resolver: Resolver | None = None) -> Path:
    """The dataset's path as the user sees it (for an unpacked dataset, the tree); ValueError
    when it would leave the home. `resolver`: one shared by a pass over many datasets."""
    return (resolver or Resolver(home))(ds.local_path)


def target(home: Path, ds: Dataset, resolver: Resolver | None = None) -> Path:
    """Where the downloaded, verified bytes live: `local_path`, or for a dataset that is
    unpacked, its archive under the home's .archives/ folder (outside the tree, so that a
    re-unpack needs no download). ValueError when local_path would leave the home."""
    path = local(home, ds, resolver)
    if ds.extract is None:
        return path
    return archive_dir(home, ds) / f"archive.{ds.extract}"


def target_text(home: Path, ds: Dataset, resolver: Resolver | None = None) -> str:
    """`target` as a string (a pass over 10,000 datasets that only stats each: building its
    Path cost more than the stat)."""
    if ds.extract is not None:
        return str(target(home, ds, resolver))
    return (resolver or Resolver(home)).text(ds.local_path)


def archive_dir(home: Path, ds: Dataset) -> Path:
    return resolved_home(home) / ARCHIVES_DIR / ds.name  # names match [a-z0-9][a-z0-9._-]*


def folder_problem(home: Path, path: Path, ds: Dataset) -> str | None:
    """Why a one-file dataset cannot go to `path`: a folder is there (the user's, never
    replaced); checked before a .part is written beside it. dsm's own earlier copy is no
    problem (several files, or an unpacked archive, before the catalogue said otherwise):
    the new file replaces it once verified."""
    if not path.is_dir() or ds.manifest is not None or (archive_dir(home, ds) / MANIFEST).exists():
        return None
    return (
        f"local_path {ds.local_path!r} is an existing folder ({path}): "
        "move it away or give the dataset another local_path"
    )


def part_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def manifest_of(ds: Dataset) -> list[ManifestFile] | None:
    """The files of a multi-file dataset, or None for a one-file dataset."""
    if ds.manifest is None:
        return None
    return [ManifestFile.from_dict(raw) for raw in ds.manifest]


def _same_stat(path: str | Path, size: int, mtime_ns: int | None) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns


def still_verified(home: Path, ds: Dataset, resolver: Resolver | None = None) -> bool:
    """Cheap check: the file (every file of a multi-file dataset) verified earlier is there
    with the same size and mtime stamp."""
    if not ds.downloaded or ds.size is None:
        return False
    try:
        path = target_text(home, ds, resolver)
    except ValueError:
        return False
    listing = manifest_of(ds)
    if listing is not None:
        return all(_same_stat(os.path.join(path, f.path), f.size, f.mtime_ns) for f in listing)
    if ds.file_mtime_ns is None or not _same_stat(path, ds.size, ds.file_mtime_ns):
        return False
    # An unpacked dataset: its archive as verified, and the tree and its file list in place.
    if ds.extract is None:
        return True
    manifest = os.path.join(os.path.dirname(path), MANIFEST)
    return local(home, ds, resolver).exists() and os.path.exists(manifest)


def kept_archive(home: Path, ds: Dataset) -> Installed | None:
    """The verified file the row records, still there unchanged (size and mtime stamp); for
    an unpacked dataset, the archive a re-unpack starts from."""
    if ds.size is None or ds.file_mtime_ns is None or ds.checksum is None:
        return None
    try:
        if not _same_stat(target(home, ds), ds.size, ds.file_mtime_ns):
            return None
    except ValueError:
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


def expectations(ds: Dataset) -> dict[str, Any]:
    """What a download of `ds` is fetched against, as its job records it (the files of a
    dataset of several: only then, so a job recorded before they existed still agrees).
    Where it goes and in what form too: a catalogue moving local_path mid-download had the
    copy recorded at the new path, where no file was."""
    expect = {
        "url": ds.original_url,
        "expected_size": ds.expected_size,
        "expected_sha256": ds.expected_sha256,
        "local_path": ds.local_path,
        "extract": ds.extract,
    }
    return expect | ({"files": ds.files} if ds.files else {})


# Recorded by jobs since these were added: a job of an older dsm, without them, agrees.
_ADDED_LATER = frozenset({"local_path", "extract"})


def catalogue_drift(ds: Dataset, expect: dict[str, Any] | None) -> str | None:
    """How the row's catalogue expectations differ from those a job downloaded against
    (another process registered a new catalogue meanwhile); None when they agree."""
    if expect is None:
        return None
    now = expectations(ds)
    changed = [k for k in now if now[k] != expect.get(k) and (k in expect or k not in _ADDED_LATER)]
    if not changed:
        return None
    what = ", ".join(f"{k} {expect.get(k)!r} -> {now[k]!r}" for k in changed)
    return f"the catalogue changed while this copy downloaded ({what}): fetch it again"


def unconfirmed_reason(ds: Dataset, fetched_unproven: str | None, sha256: str) -> str | None:
    """Why a fetched copy is not proven whole, or None. The catalogue's size or sha256 (met:
    the caller checked them) prove it, as does a transfer that saw the end framed. A copy
    that is not proven is compared with the previous unproven fetch of the same dataset."""
    if fetched_unproven is None or ds.expected_sha256 or ds.expected_size is not None:
        return None
    if ds.downloaded and not ds.confirmed and ds.checksum:
        same = "the same bytes as" if ds.checksum == sha256 else "other bytes than"
        return f"{fetched_unproven} ({same} the previous fetch, sha256 {ds.checksum})"
    return fetched_unproven


def file_problem(want: ManifestFile, got: Fetched) -> str | None:
    """Why fetched bytes are not the file the Hub listed (its size, LFS sha256 or git blob id)."""
    if got.size != want.size:
        return f"{want.path}: size mismatch: expected {want.size} bytes, got {got.size}"
    if want.sha256 and got.sha256 != want.sha256:
        return f"{want.path}: checksum mismatch: expected sha256 {want.sha256}, got {got.sha256}"
    if not want.sha256 and got.git_blob != want.git_blob:
        return (
            f"{want.path}: checksum mismatch: expected git blob {want.git_blob}, got {got.git_blob}"
        )
    return None


def hash_file(path: Path, git_blob: bool) -> Fetched:
    """Size and hashes of a file on disk (the git blob id when asked for)."""
    with path.open("rb") as fh:
        st = os.fstat(fh.fileno())
        digest = Digest(st.st_size if git_blob else None)
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.fetched(st.st_size, file_id(st))


def member(folder: Path, relative: str) -> Path:
    """A file of a multi-file dataset below its folder; ValueError for a path that would
    leave it or take the name of a partial download."""
    problem = member_problem(relative)
    if problem:
        raise ValueError(f"file {relative!r} of the dataset {problem}")
    return folder / relative


def _checked(path: Path, want: ManifestFile) -> FileId | None:
    """The file at `path` (the one hashed) when it is complete and correct, else None."""
    try:
        got = hash_file(path, not want.sha256) if path.is_file() else None
    except OSError:
        return None
    return got.written if got is not None and file_problem(want, got) is None else None


def staged(dest: Path, want: ManifestFile) -> bool:
    """A file of an unfinished multi-file download that is already complete and correct."""
    return _checked(dest, want) is not None


def stage(dest: Path, kept: Path | None, want: ManifestFile) -> bool:
    """Whether `want` is in the staging folder at `dest`, complete and correct: already (an
    earlier run fetched it), or now, linked (else copied) from `kept`, the copy in place,
    when that is still correct."""
    if staged(dest, want):
        return True
    hashed = None if kept is None or kept.is_symlink() else _checked(kept, want)
    if kept is None or hashed is None:
        return False
    dest.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(kept, dest, follow_symlinks=False)
    except OSError:  # another file system, or no hard links there: a copy, checked again
        shutil.copy2(kept, dest)
        return staged(dest, want)
    if file_id(os.lstat(dest)) == hashed:
        return True  # the very file just checked
    dest.unlink()  # another file (or a link) took `kept`'s name since: fetched instead
    return False


def install_tree(path: Path, listing: list[ManifestFile]) -> list[ManifestFile]:
    """Swap the verified staging folder (`part_of(path)`) into place; the old copy stays
    until then. Returns the listing with each file's mtime stamp (what `still_verified`
    compares)."""
    from dsm.engine import unpack  # tarfile, zipfile, lzma: for archives only

    _prune(part_of(path), {f.path for f in listing})
    unpack.place(path)
    fsync_dir(path.parent)
    return [dataclasses.replace(f, mtime_ns=(path / f.path).stat().st_mtime_ns) for f in listing]


def _prune(staging: Path, wanted: set[str]) -> None:
    """Remove from the staging folder what the listing does not name: files of an earlier
    attempt against another listing (the catalogue or the commit changed), their partials."""
    for folder, dirs, names in os.walk(staging, topdown=False):
        here = Path(folder)
        for name in names:
            if (here / name).relative_to(staging).as_posix() not in wanted:
                (here / name).unlink()
        for sub in (here / name for name in dirs):
            if sub.is_symlink():  # never written by dsm: not followed, not kept
                sub.unlink()
            elif not any(sub.iterdir()):
                sub.rmdir()


def fsync_dir(path: Path) -> None:
    """Make the renames in the folder durable. A folder removed since (a later job of the
    same store batch deleted the dataset) has nothing left to sync: its failure lost the
    batch's every change."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Installed:
    size: int
    sha256: str
    mtime_ns: int
    unconfirmed: str | None = None  # why nothing proved the copy whole (None: proven)


def install(
    path: Path,
    fetched: Fetched,
    unconfirmed: str | None,
    sync: bool = True,
    record: bool = True,
) -> Installed:
    """Atomically move the verified `.part` into place: only the very file `fetched` hashed
    (replace_own refuses another put at its name since, Swapped).

    With `record`, the sidecar keeps the verified hash (and whether it was proven) until the
    store has recorded the install (`forget_install`), so a crash in between is recovered
    without a download; a dataset whose catalogue gives its SHA-256 needs no record
    (`installed_before_crash` proves the copy by that hash). Without `sync` the caller makes
    the rename durable (`fsync_dir`) before the store records it (one folder sync for a
    batch of installs).
    """
    part, size, sha256 = part_of(path), fetched.size, fetched.sha256
    try:
        if record:
            meta = {"installed_sha256": sha256, "size": size, "unconfirmed": unconfirmed}
            write_sidecar(part, meta)
        mtime_ns = _placed(path, part, fetched.written).st_mtime_ns  # the file's, not a link's
        if not record:  # the resume sidecar of the .part, if it has one, names a file now gone
            with contextlib.suppress(OSError):  # a leftover only costs a stat at the next run
                os.unlink(sidecar_path(part))
        if sync:
            fsync_dir(path.parent)
    except DiskError:  # Swapped: it says what happened
        raise
    except OSError as exc:  # its folder removed by another program, a full disk: said, no
        error = disk_error(exc, part)  # traceback
        if isinstance(error, DiskFull):
            discard_partial(part)  # the room the store needs to record the failure
        raise error from exc
    return Installed(size, sha256, mtime_ns, unconfirmed)


def _placed(path: Path, part: Path, written: FileId) -> os.stat_result:
    """`part` renamed to `path` if it is the file `written` (replace_own), else Swapped and
    the sidecar's install record goes (it names no file)."""
    try:
        if not path.is_dir() or path.is_symlink():
            return replace_own(part, path.name, written)
        from dsm.engine import unpack  # tarfile, zipfile, lzma: for archives only

        with unpack.aside(path):  # dsm's earlier tree (see folder_problem): back on failure
            return replace_own(part, path.name, written)
    except Swapped:
        with contextlib.suppress(OSError):
            os.unlink(sidecar_path(part))
        raise


def may_be_installed(path: Path, sha256: str | None) -> bool:
    """Cheap (a stat or two): whether `installed_before_crash` could find a copy (it needs
    a file in place: a fresh download costs one stat)."""
    return path.is_file() and (sha256 is not None or sidecar_path(part_of(path)).exists())


def installed_before_crash(
    path: Path,
    sha256: str | None = None,
    size: int | None = None,
    listed: ManifestFile | None = None,
) -> Installed | None:
    """A copy that a run verified and moved into place, dying before the store heard of it:
    the one its install record names, else one with the `size` and `sha256` given (the
    catalogue's: it proves the copy as the download would have). With `listed` (a Hub file)
    it must also be the file the Hub lists now: the record may be of another commit's file,
    verified before the branch moved, which must not be recorded as the new commit."""
    part = part_of(path)
    meta = read_sidecar(part)
    sha = meta.get("installed_sha256")
    if not isinstance(sha, str):
        sha, meta = sha256, {"size": size, "unconfirmed": None}
    if sha is None or part.exists() or not path.is_file():
        return None
    st = path.stat()
    if meta.get("size") not in (None, st.st_size):
        return None
    got = hash_file(path, listed is not None and not listed.sha256)
    if got.sha256 != sha or (listed is not None and file_problem(listed, got)):
        return None
    unconfirmed = meta.get("unconfirmed")
    return Installed(st.st_size, sha, st.st_mtime_ns, str(unconfirmed) if unconfirmed else None)


def forget_install(path: str | Path, sha256: str | None = None) -> None:
    """Drop the install record (with `sha256`: only if it still names that copy, not a newer
    download's; such a record is left when a kill came after the store took the copy)."""
    # The common case, asked per dataset by a second `--all`: no record. The name is
    # sidecar_path(part_of(path)), spelled as a string: pathlib took 3/4 of the probe.
    if not os.path.lexists(f"{path}.part.json"):
        return
    part = part_of(Path(path))
    if sha256 is None or read_sidecar(part).get("installed_sha256") == sha256:
        sidecar_path(part).unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def rehash(home: Path, ds: Dataset) -> tuple[str | None, dict[str, Any]]:
    """Full verification on demand: (problem or None, the fields to record: new stamps)."""
    listing = manifest_of(ds)
    if listing is not None:
        return _rehash_tree(home, ds, listing)
    try:
        path = target(home, ds)
        st = path.stat()
        actual = sha256_of(path)
    except (OSError, ValueError) as exc:
        return f"cannot verify: {exc}", {}
    # The record counts only where it is of the copy the catalogue asks for: after an update
    # killed between its rename and its record, the size recorded for the copy before was
    # held against the very file the catalogue's sha256 names (verify failed, row error).
    own = ds.expected_sha256 in (None, ds.checksum) and ds.expected_size in (None, ds.size)
    size, size_from = _expected(ds.expected_size, ds.size if own else None, ds)
    want, want_from = _expected(ds.expected_sha256, ds.checksum if own else None, ds)
    if size is not None and st.st_size != size:
        return (
            f"size mismatch on disk: expected {size} bytes ({size_from}), found {st.st_size}",
            {},
        )
    if want and actual != want:
        return (
            f"checksum mismatch on disk: expected sha256 {want} ({want_from}), got {actual}",
            {},
        )
    problem = _tree_problem(home, ds) if ds.extract is not None else None
    if problem:
        return problem, {}
    if own or (ds.extract is not None and not ds.expected_sha256):
        return None, {"file_mtime_ns": st.st_mtime_ns}
    if ds.extract is not None:  # the tree may still be the one unpacked from the archive before
        return STALE_TREE, {}
    # The catalogue's bytes (its sha256), or its size: the record says so now (it named the
    # copy before, and kept it `changed on disk` however often it was verified).
    stamps = {"file_mtime_ns": st.st_mtime_ns, "size": st.st_size, "checksum": actual}
    return None, stamps | ({"confirmed": True, "unconfirmed_reason": None} if want else {})


STALE_TREE = (
    "the kept archive is the catalogue's, but the unpacked copy is recorded from another "
    "(an update did not finish): download unpacks it again"
)


def _rehash_tree(
    home: Path, ds: Dataset, listing: list[ManifestFile]
) -> tuple[str | None, dict[str, Any]]:
    stamped: list[ManifestFile] = []
    for want in listing:
        try:
            path = member(target(home, ds), want.path)
            got = hash_file(path, not want.sha256)
            mtime_ns = path.stat().st_mtime_ns
        except (OSError, ValueError) as exc:
            return f"cannot verify: {exc}", {}
        problem = file_problem(want, got)
        if problem:
            return f"{problem} (on disk)", {}
        stamped.append(dataclasses.replace(want, mtime_ns=mtime_ns))
    return None, {"manifest": [f.to_dict() for f in stamped]}


def _expected(catalogue: Any, recorded: Any, ds: Dataset) -> tuple[Any, str]:
    """The value a copy is checked against, and where it comes from (named in messages)."""
    if catalogue is not None:
        return catalogue, "catalogue"
    return recorded, "recorded at download" + ("" if ds.confirmed else ", unconfirmed")


def drop_partial(home: Path, ds: Dataset) -> None:
    """Remove the dataset's partial download (the disk is full: the store needs the room)."""
    try:
        part = part_of(target(home, ds))
    except ValueError:
        return
    with target_lock(part):
        if part.exists():  # else the sidecar may be an install's record: keep it
            discard_partial(part)


def writers_stopped(home: Path, ds: Dataset) -> None:
    """Return once no thread of this process writes the dataset's partial file: its
    cross-process lock is released only then, so no byte reaches a `.part` from a process
    that does not hold the lock (a transfer abandoned on cancel stops at its next step)."""
    try:
        part = part_of(target(home, ds))
    except ValueError:
        return
    with target_lock(part):
        pass


def remove(path: Path) -> None:
    """Remove the file (or a multi-file dataset's folder) and any partial download of it (the
    path is already inside the home)."""
    from dsm.engine import unpack  # tarfile, zipfile, lzma: for archives only

    part = part_of(path)
    with target_lock(part):  # a canceled transfer may still be finishing its last write
        unpack.remove_tree(path)  # and a staging folder, a copy on its way out
        discard_partial(part)


# -- unpacked datasets: the file list recorded at unpack time ---------------------------
def write_manifest(home: Path, ds: Dataset, unpacked: list[Unpacked]) -> None:
    """Record the unpacked files beside the archive. A file, not the row (as a Hub dataset's
    few files are): an archive of 100,000 files would slow every write of the store."""
    folder = archive_dir(home, ds)
    tmp = folder / (MANIFEST + ".tmp")
    doc = {"kind": ds.extract, "files": [dataclasses.asdict(u) for u in unpacked]}
    with os.fdopen(open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        f.write(json.dumps(doc))
    replace_own(tmp, MANIFEST)


def drop_archive(home: Path, ds: Dataset) -> None:
    """The archive and file list of an earlier unpacked copy, once the dataset is no longer
    unpacked (the catalogue dropped `extract`) and its new copy is in place."""
    # The lexists first: most datasets never had one, and resolving the home costs more.
    if ds.extract is None and os.path.lexists(home / ARCHIVES_DIR / ds.name):
        shutil.rmtree(archive_dir(home, ds), ignore_errors=True)


def remove_unpacked(home: Path, ds: Dataset) -> None:
    """An unpacked dataset's tree (and any copy on its way in or out), archive and list."""
    from dsm.engine import unpack  # tarfile, zipfile, lzma: for archives only

    unpack.remove_tree(local(home, ds))
    shutil.rmtree(archive_dir(home, ds), ignore_errors=True)


def _tree_problem(home: Path, ds: Dataset) -> str | None:
    """Why the unpacked tree is not the one recorded at unpack time, or None."""
    from dsm.engine.unpack import Unpacked  # tarfile, zipfile, lzma: for archives only

    try:
        doc = json.loads((archive_dir(home, ds) / MANIFEST).read_text(encoding="utf-8"))
        recorded = [Unpacked(**u) for u in doc["files"]]
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
