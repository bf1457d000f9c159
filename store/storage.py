"""A TinyDB storage that never leaves a truncated file and never loses another process's update.

Stock JSONStorage truncates and rewrites in place, so a crash mid-write leaves a broken file.
Here every write goes to a temp file in the same folder, is fsynced and `os.replace`d over the
old one. Writes only happen inside a transaction that holds a cross-process file lock and starts
from the file's latest content, so two processes never overwrite each other's changes.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from filelock import FileLock, Timeout
from tinydb.storages import Storage

Data = dict[str, dict[str, dict[str, Any]]]
LOCK_TIMEOUT = 30.0
CHUNK_ROWS = 1000  # documents encoded and written at a time
TEMP_PREFIX, TEMP_SUFFIX = ".db-", ".tmp"  # `.db-XXXX.tmp` beside db.json while writing


class StoreError(Exception):
    """The store cannot be read or written."""


class StoreCorrupt(StoreError):
    """db.json exists but is not a dsm store; it is left exactly as it was."""


class StoreFull(StoreError):
    """No space left to write the store (ENOSPC); the old file is untouched."""


def _write_error(path: Path, exc: OSError) -> StoreError:
    kind = StoreFull if exc.errno == errno.ENOSPC else StoreError
    return kind(f"{path}: cannot write: {exc.strerror or exc}")


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere os.umask must set it to read
    it (and at once set it back), which races other threads creating files."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_shape(path: Path, data: object) -> Data:
    if not isinstance(data, dict):
        raise StoreCorrupt(f"{path}: expected a JSON object of tables, found {type(data).__name__}")
    for table, rows in data.items():
        if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
            raise StoreCorrupt(f"{path}: table {table!r} is not an object of documents")
    return data


def encode(data: Data) -> Iterator[bytes]:
    """The tables as orjson writes them whole, in pieces of CHUNK_ROWS documents: never the
    14 MB of a 10,000-dataset store in memory at once as bytes. orjson: at 10,000 datasets
    the stdlib's dumps and loads took ~80 % of a write."""
    yield b"{"
    for number, (table, rows) in enumerate(data.items()):
        yield (b"," if number else b"") + orjson.dumps(table) + b":{"
        items = iter(rows.items())
        first = True
        while batch := dict(itertools.islice(items, CHUNK_ROWS)):
            yield (b"" if first else b",") + orjson.dumps(batch)[1:-1]  # without its braces
            first = False
        yield b"}"
    yield b"}"


class AtomicJSONStorage(Storage):
    def __init__(self, path: Path) -> None:
        self.path = path
        # Not thread-local: a deferred transaction's lock is released by `flush`, which may
        # run in another thread of the process.
        self._lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT, thread_local=False)
        self._umask = current_umask()
        self.mutex = threading.RLock()
        # Parsed content keyed by the file's identity: re-read only when another write happened.
        self._cache: tuple[tuple[int, int, int], Data] | None = None
        self._txn: Data | None = None  # the tables while the lock is held
        self._depth = 0  # transactions open (nested ones count)
        self._dirty = False  # the tables hold changes the file does not
        self._swept = False
        self._before: dict[object, Callable[[], None]] = {}
        self._base: tuple[int, int, int] | None = None  # the file the tables were read from

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            # Every write replaces db.json whole: a link would be replaced by a file at the
            # first, the file it named left behind, stale; a dangling one read as no store.
            raise StoreCorrupt(
                f"{self.path}: a symbolic link (to {os.readlink(self.path)}); dsm replaces "
                "its store whole at every write, so it must be the file itself: move it here"
            )
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> Data:
        ident = self._base = self._identity()
        if ident is None:
            return {}
        if self._cache is not None and self._cache[0] == ident:
            return self._cache[1]
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        if not raw.strip():
            # dsm never writes an empty store (it replaces the file whole): something else
            # emptied it, so the rows are lost, not absent. A missing file is a new store.
            raise StoreCorrupt(f"{self.path}: empty file (no tables): not a dsm store")
        try:
            data = _check_shape(self.path, orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            raise StoreCorrupt(f"{self.path}: not valid JSON ({exc})") from None
        self._cache = (ident, data)
        return data

    def read(self) -> Data:
        with self.mutex:
            return self._txn if self._txn is not None else self._load()

    def write(self, data: Data) -> None:
        if not self._depth:
            raise StoreError("write outside a transaction")
        self._txn = data
        self._dirty = True

    @property
    def identity(self) -> tuple[int, int, int] | None:
        return self._identity()

    @property
    def pending(self) -> bool:
        """Deferred changes wait for `flush` (the lock is held meanwhile)."""
        return self._dirty and not self._depth

    def transaction(self, defer: bool = False) -> _Transaction:
        """Hold the lock, start from the latest file, write once at the end if anything changed.

        With `defer` the changes are not written yet: the lock stays held and the tables kept,
        so the next transactions build on them, until `flush` or a transaction without `defer`
        writes everything at once (many small changes, one file write). A transaction that
        fails after changing the tables drops every change not yet written."""
        return _Transaction(self, defer)

    @contextmanager
    def open_deferred(self) -> Iterator[bool]:
        """True, holding the mutex, when a deferred transaction is open (the lock held, the
        tables loaded) and no other thread is in the store: a deferred change then touches
        only memory and may run on the caller's thread. False, holding nothing, otherwise."""
        if not self.mutex.acquire(blocking=False):
            yield False
            return
        try:
            yield self._txn is not None and not self._depth
        finally:
            self.mutex.release()

    def flush(self) -> None:
        """Write the deferred changes, if any, and release the lock."""
        with self.mutex:
            if self._txn is not None and not self._depth:
                if self._dirty:
                    self._write_out()
                else:
                    self._end()

    def _begin(self) -> None:
        try:
            self._lock.acquire()
        except Timeout:
            raise StoreError(f"{self.path}: another dsm process holds the lock") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot lock: {exc.strerror or exc}") from None
        try:
            if not self._swept:
                self._sweep_temp_files()
            # The cached tables are reused only when the file's identity is the one we
            # parsed or wrote; every writer stamps a unique mtime (see _commit).
            self._txn = self._load()
        except BaseException:
            self._lock.release()
            raise
        self._dirty = False

    def _end(self) -> None:
        self._txn = None
        self._dirty = False
        self._lock.release()

    def _abandon(self) -> None:
        self._cache = None  # TinyDB mutates the cached tables in place
        self._before.clear()
        self._end()

    def _write_out(self) -> None:
        assert self._txn is not None
        try:
            self._commit(self._txn)
        except BaseException:
            self._abandon()
            raise
        self._end()

    def check_room(self) -> None:
        """Raise StoreFull unless the store's folder has room to write the store again now
        (a statfs: creating a file to try costs a journal commit on some disks)."""
        cached = self._cache
        if self._txn is not None and cached is not None:  # locked: the file is the one cached
            size = cached[0][1]  # no stat: this runs once a job (a transfer thread, the loop)
        else:
            try:
                size = os.stat(self.path).st_size
            except (FileNotFoundError, NotADirectoryError):
                size = 0
        try:
            st = os.statvfs(self.path.parent)
        except OSError as exc:
            raise StoreError(f"{self.path.parent}: cannot stat: {exc.strerror or exc}") from None
        if st.f_bavail * st.f_frsize <= size:
            raise _write_error(self.path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    def before_write(self, key: object, fn: Callable[[], None]) -> None:
        """Run `fn` before the next write of the file (once per key): what the pending
        changes claim must be durable first (a renamed file's folder, synced)."""
        self._before[key] = fn

    def _sweep_temp_files(self) -> None:
        """Remove temp files a killed writer left behind (only under the lock: no write is
        in flight then, so every one of them is garbage)."""
        self._swept = True
        try:
            leftovers = list(self.path.parent.glob(TEMP_PREFIX + "*" + TEMP_SUFFIX))
        except OSError:
            return
        for tmp in leftovers:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _commit(self, data: Data) -> None:
        before, self._before = self._before, {}
        try:
            for fn in before.values():
                fn()
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write: {exc}") from None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=self.path.parent)
            # mkstemp makes it 0600; db.json is as shareable as the user's umask says (a
            # group-shared home with umask 002), like every other file dsm creates.
            os.fchmod(fd, 0o666 & ~self._umask)
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in encode(data):
                    fh.write(chunk)
                fh.flush()
                # A nanosecond stamp with random low digits: inode numbers are reused and
                # sizes repeat, so (inode, size, mtime) alone could name two contents.
                stamp = time.time_ns() // 1_000_000 * 1_000_000 + secrets.randbelow(1_000_000)
                os.utime(fh.fileno(), ns=(stamp, stamp))
                os.fsync(fh.fileno())
            self._check_unchanged()
            os.replace(tmp, self.path)
        except StoreError:
            Path(tmp).unlink(missing_ok=True)
            raise
        except TypeError as exc:  # e.g. an integer beyond 64 bits: refuse, keep the old file
            Path(tmp).unlink(missing_ok=True)
            raise StoreError(f"{self.path}: cannot store this value: {exc}") from None
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise _write_error(self.path, exc) from None
        ident = self._identity()
        self._cache = (ident, data) if ident else None
        try:  # make the rename itself durable
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StoreError(f"{self.path.parent}: cannot sync: {exc.strerror or exc}") from None

    def _check_unchanged(self) -> None:
        """The file is still the one this transaction read: no other process can write it
        while we hold the lock, unless the lock was broken (db.json.lock deleted while held,
        a file system whose locks do not work). Its changes are not overwritten then."""
        if self._identity() != self._base:
            raise StoreError(
                f"{self.path}: another process wrote it while this one held the lock "
                f"({self._lock.lock_file} deleted?); this write is dropped rather than laid "
                "over that one"
            )

    def close(self) -> None:
        pass


class _Transaction:
    """AtomicJSONStorage.transaction; a class, not a generator: it is entered dozens of
    times per job (nested in every store call)."""

    __slots__ = ("defer", "earlier", "nested", "storage")

    def __init__(self, storage: AtomicJSONStorage, defer: bool) -> None:
        self.storage, self.defer = storage, defer
        self.earlier = self.nested = False

    def __enter__(self) -> None:
        st = self.storage
        st.mutex.acquire()
        try:
            if st._depth:  # nested: the outermost transaction writes
                st._depth += 1
                self.nested = True
                return
            if st._txn is None:
                st._begin()
            self.earlier, st._dirty = st._dirty, False
            st._depth = 1
        except BaseException:
            st.mutex.release()
            raise

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        st = self.storage
        try:
            if self.nested:
                st._depth -= 1
                return
            st._depth = 0
            if kind is not None:
                if st._dirty:  # the tables are changed in place: forget them
                    st._abandon()
                elif self.earlier:
                    st._dirty = True  # the deferred changes are intact: still pending
                else:
                    st._end()
                return
            st._dirty = st._dirty or self.earlier
            if st._dirty and not self.defer:
                st._write_out()
            elif not st._dirty:
                st._end()
        finally:
            st.mutex.release()
