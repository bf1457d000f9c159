"""The on-disk state of an unfinished download: `<target>.part` and its JSON sidecar, which
records the URL asked for, the validators (ETag / Last-Modified, with the response's Date that
tells whether the Last-Modified is strong) that prove a resume continues the same file, the
Content-Encoding its bytes came in (kept as sent: a resume must come in the same one), the
total length, and for a segmented download each segment's progress."""

from __future__ import annotations

import contextlib
import ctypes
import email.utils
import errno
import json
import os
import platform
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dsm.domain.redact import redact_url
from dsm.errors import Swapped

DISK_RESERVE = 64 << 20  # left free by a write of no known size (at most 5% of the disk)

_target_locks: dict[Path, threading.Lock] = {}
_target_locks_guard = threading.Lock()


def target_lock(part: Path) -> threading.Lock:
    """One writer per partial file in this process: a transfer abandoned on cancel may still
    be finishing its last step when the next job for the same file starts."""
    with _target_locks_guard:
        return _target_locks.setdefault(part, threading.Lock())


class Room:
    """The free space of a folder's disk, for writes whose size nobody checked up front (a
    body without a length, an archive's contents): they stop while DISK_RESERVE is left, so
    the store can still record the end and other jobs are not failed by a full disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.reserve = min(DISK_RESERVE, shutil.disk_usage(folder).total // 20)

    def lacking(self, pending: int) -> str | None:
        """Why `pending` more bytes may not be written, or None."""
        free = shutil.disk_usage(self.folder).free
        if free - pending >= self.reserve:
            return None
        return f"{self.folder} has {free} bytes free; {self.reserve} are kept free"


# O_PATH: a folder is passed through and named in, never read (a folder above the home may
# be execute-only, as `drwx--x--x`: opened for reading it was EACCES; macOS has none).
_FOLDER = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def folder_fd(folder: Path, make: bool = False) -> int:
    """A descriptor of `folder` (the caller closes it), reached from `/` without following a
    symbolic link. Its path was resolved and checked to stay in the home (dsm.catalog.paths)
    and holds no link: one there now was swapped in since (by another user of a shared home)
    and is refused (ELOOP), never followed out of the home, as a path given to the system
    would be. `make`: missing folders are made on the way."""
    path = os.path.abspath(folder)
    if _no_links_open is not None:
        try:
            return _no_links_open(path)
        except OSError:  # the walk makes what is missing, or names the link or the file
            pass
    return _walk(path, make)


def _walk(path: str, make: bool) -> int:
    """folder_fd one name at a time (openat), where openat2 is missing or refused."""
    names = path.split("/")[1:]
    fd = os.open("/", _FOLDER)
    try:
        for depth, name in enumerate(names, 1):
            try:
                inner = os.open(name, _FOLDER, dir_fd=fd)
            except OSError as exc:
                inner = _not_entered(fd, name, make, exc, "/" + "/".join(names[:depth]))
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_SYS_OPENAT2 = 437  # Linux 5.6+: one number on every architecture but alpha (unified table)
_RESOLVE_NO_SYMLINKS = 0x04


def _openat2() -> Callable[[str], int] | None:
    """openat2(RESOLVE_NO_SYMLINKS): the whole walk in one system call, where the kernel has
    it (one call and a close a file, not two a folder: ~9 us against ~31 for 4 folders, and
    each call lets another thread take the GIL). None where it cannot be used."""
    if not sys.platform.startswith("linux") or platform.machine().startswith("alpha"):
        return None
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    how = _OpenHow(_FOLDER, 0, _RESOLVE_NO_SYMLINKS)
    size = ctypes.sizeof(how)

    def open_no_links(path: str) -> int:
        name = os.fsencode(path)
        if b"\0" in name:  # C would read up to it: another folder (os.open refuses it too)
            raise ValueError(f"embedded null byte in {path!r}")
        fd: int = syscall(_SYS_OPENAT2, _AT_FDCWD, name, ctypes.byref(how), size)
        if fd < 0:
            raise OSError(ctypes.get_errno(), path)
        return fd

    try:  # ENOSYS before 5.6, EPERM from a seccomp filter, ...: the walk serves instead
        os.close(open_no_links("/"))
    except OSError:
        return None
    return open_no_links


_AT_FDCWD = -100
_no_links_open = _openat2()


def _not_entered(fd: int, name: str, make: bool, exc: OSError, here: str) -> int:
    """A folder `folder_fd` could not enter: made when missing (`make`), else an error that
    names a link where it is one."""
    try:
        if not (make and isinstance(exc, FileNotFoundError)):
            raise exc
        with contextlib.suppress(FileExistsError):  # made meanwhile by another job
            os.mkdir(name, dir_fd=fd)
        return os.open(name, _FOLDER, dir_fd=fd)
    except OSError as failed:
        if failed.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise OSError(
            failed.errno, f"{here} is a symbolic link or no folder; dsm never writes through one"
        ) from None


def make_folders(folder: Path) -> None:
    """`folder.mkdir(parents=True, exist_ok=True)`, never through a link (folder_fd)."""
    os.close(folder_fd(folder, make=True))


def open_own(path: Path, flags: int) -> int:
    """A file descriptor of one of dsm's own names (a partial, its sidecar), never through a
    symbolic link at that name nor at a folder above it (folder_fd): a link planted there (by
    another user of a shared home) had dsm write the download over the file it points at,
    then move the link into place."""
    folder = folder_fd(path.parent)
    try:  # the umask decides the mode
        return os.open(path.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=folder)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise OSError(
            errno.ELOOP,
            f"{path} is a symbolic link, not a file dsm wrote; remove it (dsm never writes "
            "through it)",
        ) from None
    finally:
        os.close(folder)


# Which file a descriptor or a name reaches, whatever its name, as it was once written:
# (st_dev, st_ino, st_size, st_mtime_ns). The inode alone is not enough: once dsm's file is
# closed and unlinked (`rm a.part; cp other a.part`), the other file may get its number.
FileId = tuple[int, int, int, int]


def file_id(st: os.stat_result) -> FileId:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def replace_own(path: Path, name: str, written: FileId | None = None) -> os.stat_result:
    """`os.replace(path, path.with_name(name))` in a folder reached by folder_fd; the placed
    file's own status. A rename moves whatever is at `path`: another user of a shared home
    who swapped dsm's file for a symbolic link (or anything but a file) or, with `written`
    (the file dsm wrote and hashed), for another file, had it installed as the verified
    copy. Checked before the rename (the copy in place stays) and after it (a swap between
    the two): such a file is removed and refused (Swapped), never left in place."""
    folder = folder_fd(path.parent)
    try:
        _refuse(path, path.name, folder, written, "before")
        os.replace(path.name, name, src_dir_fd=folder, dst_dir_fd=folder)
        return _refuse(path, name, folder, written, "right after")
    finally:
        os.close(folder)


def _refuse(
    path: Path, name: str, folder: int, written: FileId | None, when: str
) -> os.stat_result:
    """`name`'s own status in `folder` when it is a file and, with `written`, that file;
    else it is removed (a folder is left) and Swapped names `path`. `when`: the check's
    moment, "before" or "right after" the rename (a file found missing then was removed)."""
    try:
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:  # a clean-up of `*.part` (or of the copy) by another program
        raise Swapped(f"{path} was removed {when} it was moved into place") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a symbolic link or no file"
    elif written is not None and file_id(st) != written:
        what = "another file than the one dsm wrote and hashed"
    else:
        return st
    kept = stat.S_ISDIR(st.st_mode)
    if not kept:
        os.unlink(name, dir_fd=folder)
    raise Swapped(
        f"{path} was swapped for {what} before it was moved into place; dsm never installs "
        "one" + ("" if kept else " (removed)")
    )


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """`os.pwrite` may write fewer bytes than given: write the rest; a write that makes no
    progress is an error, never bytes silently missing from the file."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise _short(len(view), offset)
        view, offset = view[n:], offset + n


def write_all(fh: BinaryIO, data: bytes | memoryview, offset: int) -> None:
    """The same for a file object (`offset`: where the write starts, for the message)."""
    view = memoryview(data)
    while view:
        n = fh.write(view)
        if not n:
            raise _short(len(view), offset)
        view, offset = view[n:], offset + n


def _short(left: int, offset: int) -> OSError:
    return OSError(errno.EIO, f"short write: {left} bytes at offset {offset} were not written")


def sidecar_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def read_sidecar(part: Path) -> dict[str, Any]:
    """The sidecar, or {} (the partial starts clean) when there is none or it is not one
    this code writes: damaged, or another program's. Its validators go back to the server
    in If-Range: an ETag of another type failed every later download with an internal
    error, one with a line break in it failed each attempt."""
    try:
        with os.fdopen(open_own(sidecar_path(part), os.O_RDONLY), encoding="utf-8") as f:
            data = json.loads(f.read())
    except (OSError, ValueError, RecursionError):  # a link: OSError, as if absent
        return {}
    return data if _sound(data) else {}


def _sound(data: Any) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("url", ""), str):
        return False
    for key in ("etag", "last_modified", "date", "encoding"):  # header values: printable ASCII
        value = data.get(key)
        if value is not None and not (
            isinstance(value, str) and value.isascii() and value.isprintable()
        ):
            return False
    total = data.get("total")
    return total is None or (type(total) is int and total >= 0)


def write_sidecar(part: Path, meta: dict[str, Any]) -> None:
    """Write the sidecar atomically; its URL redacted (resume.start compares it redacted)."""
    side = sidecar_path(part)
    tmp = side.with_name(side.name + ".tmp")
    if isinstance(meta.get("url"), str):
        meta = {**meta, "url": redact_url(meta["url"])}
    with os.fdopen(open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        f.write(json.dumps(meta))
    replace_own(tmp, side.name)


def discard_partial(part: Path) -> None:
    part.unlink(missing_ok=True)
    sidecar_path(part).unlink(missing_ok=True)


def validator(etag: str | None, last_modified: str | None, date: str | None) -> str | None:
    """The If-Range value that proves identity, from a response's (or a sidecar's) ETag,
    Last-Modified and Date: only validators RFC 9110 calls strong. A strong ETag; else a
    Last-Modified at least one second older than the Date of the response that carried it
    (RFC 9110 8.8.2.2: a file may change twice within the second it names); else None."""
    if etag and not etag.startswith("W/"):
        return etag
    modified, now = _http_date(last_modified), _http_date(date)
    if last_modified and modified is not None and now is not None and now - modified >= 1:
        return last_modified
    return None


def meta_validator(meta: Mapping[str, Any]) -> str | None:
    """The validator a sidecar recorded (with the Date it came with)."""
    return validator(meta.get("etag"), meta.get("last_modified"), meta.get("date"))


def _http_date(value: str | None) -> float | None:
    """An HTTP date as a timestamp; None when absent or unparsable (then it proves nothing)."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


@dataclass
class Partial:
    """What is on disk for one target: the `.part` file, its sidecar, the bytes we keep."""

    source: str  # the URL asked for; the sidecar records it, not where redirects led
    target: Path
    part: Path
    have: int
    meta: dict[str, Any]

    @property
    def validator(self) -> str | None:
        return meta_validator(self.meta)
