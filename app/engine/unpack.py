"""Unpacking a verified archive into a dataset's directory, safe against hostile archives.

Everything is written into a temporary path beside `local_path` (`<local_path>.part`, a name
the catalogue reserves) and moved into place only when the whole archive is out (`place`).
Each member is checked before a byte is written: tar members through `tarfile`'s `data`
filter (no absolute or `..` paths, no links leaving the tree, no devices or fifos), zip
members by the same rules written out here. On top of both: no symbolic links at all (a
tree without them cannot be written through or verified through a link), no member that
takes another's place (a duplicate, a file where a folder is), and limits on the member
count and on the bytes actually written (a decompression bomb stops at the limit).

Files are written by this module, never by `extractall`, so every byte is counted and hashed
on its way to disk: the list it returns (path, size, sha256) is what `verify` checks later.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Protocol

from dsm.config import DEFAULT_EXTRACT_MAX_MEMORY
from dsm.domain.hub import Clash, Clashes
from dsm.domain.relpath import CONTROL, MAX_DEPTH
from dsm.engine import bounds
from dsm.errors import ArchiveError
from dsm.transfer.partfile import Room

KINDS = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz", "gz")
BLOCK = 1 << 20
MAX_NAME = 4096  # PATH_MAX: a longer member name is refused
OLD_SUFFIX = ".part.old"  # the previous copy, while the new one takes its place


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_members: int
    max_memory: int = DEFAULT_EXTRACT_MAX_MEMORY  # what a decoder may allocate (xz, LZMA)


@dataclass(frozen=True, order=True)
class Unpacked:
    """One file as written: its path inside the tree (posix), size and sha256."""

    path: str
    size: int
    sha256: str


# The tree as claimed so far: a folder maps each name in it to its own entries, a file to
# None. One node per folder (not every folder's full path: a member 900 folders deep held
# 810,000 characters of them), so memory and time grow with the members' names, not their
# square.
Folder = dict[str, "Folder | None"]
_ABSENT: Folder = {}  # a sentinel: `get` found nothing
_HELD = 100  # the bytes Python spends on one name held beyond its characters (about)


@dataclass
class _Writer:
    """Writes members under `root`, enforcing the limits and the no-overwrite rule."""

    root: Path
    limits: Limits
    checkpoint: Callable[[], None]
    files: list[Unpacked] = field(default_factory=list)
    tree: Folder = field(default_factory=dict)
    written: int = 0
    members: int = 0
    held: int = 0  # the bytes of names held in `tree`, `files`, `clashes`; <= max_memory
    clashes: Clashes = field(default_factory=Clashes)  # names one where case is not told
    room: Room = field(init=False)  # the disk's free space, re-checked each BLOCK written

    def __post_init__(self) -> None:
        self.room = Room(self.root)

    def count(self, name: str) -> None:
        """One more member, or a folder a member's path makes that no member listed."""
        self.checkpoint()  # a cancel lands between members
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveError(
                f"member {_shown(name)}: more than {self.limits.max_members} members and "
                "folders (DSM_EXTRACT_MAX_MEMBERS)"
            )

    def _hold(self, name: str, chars: int) -> None:
        self.held += 2 * (chars + _HELD)  # held twice: in `tree` and in `clashes`
        if self.held > self.limits.max_memory:
            raise ArchiveError(
                f"member {_shown(name)}: the names of its files and folders need more than "
                f"{self.limits.max_memory} bytes of memory (DSM_EXTRACT_MAX_MEMORY)"
            )

    def _folder(self, rel: PurePosixPath, parts: tuple[str, ...]) -> Folder:
        """The folder at `parts`, each folder on the way made (and counted: a path's folders
        are inodes no member listed) when no member made it before."""
        node = self.tree
        for depth, part in enumerate(parts, 1):
            child = node.get(part, _ABSENT)
            if child is None:
                raise ArchiveError(
                    f"member {_shown(str(rel))}: would be written inside file "
                    f"{_shown('/'.join(parts[:depth]))}"
                )
            if child is _ABSENT:
                if depth < len(rel.parts):  # not the member's own folder: counted by `count`
                    self.count(str(rel))
                self._hold(str(rel), len(part))
                (self.root / "/".join(parts[:depth])).mkdir()
                child = node[part] = {}
            node = child
        return node

    def _claim(self, rel: PurePosixPath) -> None:
        """Refuse a file whose place another member holds; the folders above it exist once
        it returns."""
        self._differs_by_case(rel, folder=False)
        *above, name = rel.parts
        folder = self._folder(rel, tuple(above))
        if name in folder:
            raise ArchiveError(f"member {_shown(str(rel))}: would overwrite another member")
        self._hold(str(rel), len(str(rel)) + len(name))  # the file list holds the path
        folder[name] = None

    def directory(self, rel: PurePosixPath) -> None:
        self._differs_by_case(rel, folder=True)
        self._folder(rel, rel.parts)

    def _differs_by_case(self, rel: PurePosixPath, *, folder: bool) -> None:
        """Refuse a member another one's name takes the place of where letter case and
        Unicode form are not told apart (macOS, Windows): there the second overwrote the
        first, or failed half-way. A clash of identical names is `_claim`'s to name."""
        clash = self.clashes.add(self.members, str(rel), folder=folder)
        if clash is not None and clash.by_case:
            raise ArchiveError(f"member {_shown(str(rel))}: {_CLASHES[clash.how](clash)}")

    def copy(self, rel: PurePosixPath, target: PurePosixPath) -> None:
        """A hard link: a copy of the file an earlier member wrote (read back from the tree;
        tarfile would load every member's header to find it, and rewind a compressed tar)."""
        if not self._is_file(target):
            raise ArchiveError(
                f"member {str(rel)!r}: cannot be read: a hard link to {str(target)!r}, "
                "which no member before it wrote"
            )
        with (self.root / target).open("rb") as source:
            self.file(rel, source)

    def _is_file(self, rel: PurePosixPath) -> bool:
        node: Folder | None = self.tree
        for part in rel.parts:
            if node is None or (node := node.get(part, _ABSENT)) is _ABSENT:
                return False
        return node is None

    def file(self, rel: PurePosixPath, source: Readable) -> None:
        self._claim(rel)
        dest = self.root / rel
        digest, size = hashlib.sha256(), 0
        # "x": never through an existing name (there are no links to follow anyway).
        with dest.open("xb") as out:
            while block := source.read(BLOCK):
                size += len(block)
                self.written += len(block)
                if self.written > self.limits.max_bytes:
                    raise ArchiveError(
                        f"member {str(rel)!r}: unpacked size exceeds {self.limits.max_bytes} "
                        "bytes (DSM_EXTRACT_MAX_BYTES)"
                    )
                if self.written // BLOCK != (self.written - len(block)) // BLOCK:
                    self._room(rel, len(block))
                digest.update(block)
                out.write(block)
        self.files.append(Unpacked(str(rel), size, digest.hexdigest()))

    def _room(self, rel: PurePosixPath, pending: int) -> None:
        """Stop while the disk keeps its reserve (the byte limit is no disk's size)."""
        if lacking := self.room.lacking(pending):
            raise ArchiveError(
                f"member {str(rel)!r}: stopped after {self.written - pending} bytes unpacked: "
                f"{lacking}"
            )


_CLASHES: dict[str, Callable[[Clash], str]] = {
    "duplicate of": lambda c: f"the same file as member {_shown(c.theirs)}{c.case_note()}",
    "inside": lambda c: f"would be written inside file {_shown(c.theirs)}{c.case_note()}",
    "a folder holding": lambda c: (
        f"a file where member {_shown(c.theirs)} needs a folder{c.case_note()}"
    ),
}


def _shown(name: str) -> str:
    """A name as an error shows it: a long one (up to MAX_NAME before it is refused, far
    more in a member count's message) is cut, the message goes to the store."""
    return repr(name) if len(name) <= 200 else f"{name[:200]!r}... ({len(name)} characters)"


def _member_path(name: str, link: str = "") -> PurePosixPath:
    """The member's path inside the tree; ArchiveError for anything that could leave it, or
    a name (or link target) longer than any path a file system takes."""
    if max(len(name), len(link)) > MAX_NAME:
        raise ArchiveError(f"member {_shown(name)}: a name longer than {MAX_NAME} characters")
    if "\\" in name or "\x00" in name:
        raise ArchiveError(f"member {name!r}: backslash or NUL in its name")
    if CONTROL.search(name):  # as a catalogue or Hub path: no line break or escape in a name
        raise ArchiveError(f"member {name!r}: a control character (line break, escape) in its name")
    rel = PurePosixPath(name)
    if rel.is_absolute() or (rel.parts and ":" in rel.parts[0]):
        raise ArchiveError(f"member {name!r}: absolute path")
    if ".." in rel.parts:
        raise ArchiveError(f"member {name!r}: path with '..'")
    if len(rel.parts) > MAX_DEPTH:
        raise ArchiveError(f"member {_shown(name)}: a path more than {MAX_DEPTH} levels deep")
    if not rel.parts or str(rel) == ".":
        raise ArchiveError(f"member {name!r}: empty path")
    return rel


def _is_root(name: str) -> bool:
    """The folder entry of the tree itself (`./`, first in `tar -C dir -cf x.tar .`)."""
    return not PurePosixPath(name).parts


def _open_tar(archive: Path, kind: str, limits: Limits, stack: ExitStack) -> tarfile.TarFile:
    """The archive as a tar, its stream decompressed here: xz under a memory limit
    (lzma.LZMAFile takes none), and every kind through CappedReads."""
    stream: bounds.Stream = stack.enter_context(archive.open("rb"))
    if kind == "tar.gz":
        stream = stack.enter_context(gzip.GzipFile(fileobj=stream, mode="rb"))
    elif kind == "tar.bz2":
        stream = stack.enter_context(bz2.BZ2File(stream))
    elif kind == "tar.xz":
        raw = stack.enter_context(bounds.XZReader(stream, limits.max_memory))
        stream = stack.enter_context(io.BufferedReader(raw, BLOCK))
    capped = bounds.CappedReads(stream)
    return stack.enter_context(tarfile.open(fileobj=capped, mode="r:"))


def _tar(archive: Path, kind: str, w: _Writer) -> None:
    with ExitStack() as stack:
        tf = _open_tar(archive, kind, w.limits, stack)
        # One header at a time, never the whole list (getmembers); tarfile keeps each it read
        # (as many as the member limit, hundreds of MiB): dropped, the writer knows the names.
        while (member := tf.next()) is not None:
            tf.members.clear()  # type: ignore[attr-defined]  # not in typeshed
            w.count(member.name)
            if member.isdir() and _is_root(member.name):
                continue  # nothing to write: the tree is made already
            _member_path(member.name, member.linkname)  # the filter strips a leading "/"
            try:
                safe = tarfile.data_filter(member, str(w.root))
            except tarfile.FilterError as exc:
                raise ArchiveError(f"member {member.name!r}: refused: {exc}") from None
            if safe.issym():
                raise ArchiveError(f"member {member.name!r}: symbolic links are not unpacked")
            rel = _member_path(safe.name)
            if safe.isdir():
                w.directory(rel)
            elif safe.islnk():
                w.copy(rel, _member_path(safe.linkname))
            elif safe.isfile():
                with tf.extractfile(safe) as source:  # type: ignore[union-attr]
                    w.file(rel, source)
            else:
                raise ArchiveError(f"member {member.name!r}: not a file or folder")


def _zip(archive: Path, w: _Writer) -> None:
    bounds.check_zip_entries(archive, w.limits.max_members)
    with zipfile.ZipFile(archive) as zf, archive.open("rb") as raw:
        for info in zf.infolist():
            w.count(info.filename)
            if info.is_dir() and _is_root(info.filename):
                continue
            rel = _member_path(info.filename)
            kind_bits = stat.S_IFMT(info.external_attr >> 16)  # unix type bits, when set
            if kind_bits not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = "symbolic link" if kind_bits == stat.S_IFLNK else "special file"
                raise ArchiveError(f"member {info.filename!r}: {kind}; only files are unpacked")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"member {info.filename!r}: encrypted")
            if info.is_dir():
                w.directory(rel)
                continue
            bounds.check_zip_member(raw, info, w.limits.max_memory)
            with zf.open(info) as source:
                w.file(rel, source)


def _gz(archive: Path, tmp: Path, name: str, w: _Writer) -> None:
    """The one file of a gz stream, written at `tmp` (the writer's root is its folder)."""
    w.count(name)
    with gzip.open(archive, "rb") as source:
        w.file(PurePosixPath(tmp.name), source)
    w.files = [replace(f, path=name) for f in w.files]  # listed by its final name


# What a corrupt archive raises from the stdlib's readers and decompressors.
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    gzip.BadGzipFile,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,  # a zip compression method the stdlib does not know
)


def unpack(
    archive: Path, kind: str, dest: Path, limits: Limits, checkpoint: Callable[[], None]
) -> list[Unpacked]:
    """Unpack `archive` into `dest`'s temporary path (a folder, for `gz` a file); returns the
    files written. On any failure the temporary path is removed; `dest` is never touched."""
    tmp = temp_of(dest)
    _remove(tmp)
    _remove(dest.with_name(dest.name + OLD_SUFFIX))  # left by a crash inside `place`
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if kind != "gz":
        tmp.mkdir()
        # The user's alone while members are written: in a group-shared home another member
        # could plant a link between two members (`sub` -> a folder of the user's) and have
        # the next one written through it. The umask's mode once the last is out.
        mode = stat.S_IMODE(tmp.stat().st_mode)
        tmp.chmod(0o700)
    writer = _Writer(tmp.parent if kind == "gz" else tmp, limits, checkpoint)
    try:
        if kind == "gz":
            _gz(archive, tmp, dest.name, writer)
        elif kind == "zip":
            _zip(archive, writer)
        else:
            _tar(archive, kind, writer)
        if kind != "gz":
            tmp.chmod(mode)
    except _CORRUPT as exc:
        _remove(tmp)
        raise ArchiveError(f"not a valid {kind} archive: {exc}") from None
    except BaseException:  # refused, canceled, disk full: nothing half-done stays
        _remove(tmp)
        raise
    return sorted(writer.files)


def temp_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def place(dest: Path) -> None:
    """Move the complete temporary copy into place; the previous copy goes only afterwards."""
    with aside(dest):
        os.rename(temp_of(dest), dest)


@contextmanager
def aside(dest: Path) -> Iterator[None]:
    """The copy at `dest` (a tree, a file) waits at `.part.old` while the body puts the new
    one there; it goes afterwards, or comes back if the body fails.

    Two renames (the stdlib has no atomic exchange): a crash between them leaves the new copy
    at its temporary path and the old one at `.part.old`, both removed by the next unpack.
    """
    old = dest.with_name(dest.name + OLD_SUFFIX)
    _remove(old)
    if dest.is_symlink() or dest.exists():
        os.rename(dest, old)
    try:
        yield
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(dest):
            os.rename(old, dest)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_tree(dest: Path) -> None:
    """The unpacked copy and any temporary or previous one."""
    for path in (dest, temp_of(dest), dest.with_name(dest.name + OLD_SUFFIX)):
        _remove(path)
