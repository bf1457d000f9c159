"""One job per dataset at a time: in this process (an anyio lock) and across processes (a file
lock under the home's `.locks/`, `LockFile`).

Across processes each dataset has one byte of the shared file `.locks/datasets.lock`, locked
with an open-file-description lock (Linux `F_OFD_SETLK`): two fcntl calls a job on the event
loop. A lock file per dataset cost a file creation the first time (~0.4 ms on the event loop
on a journaling disk, issue 17) and left a file per dataset behind. OFD locks belong to the
open file, not the process, so two engines in one process exclude each other as two
processes do. Elsewhere (macOS, whose struct flock is laid out otherwise), and on a file
system that refuses OFD locks (some NFS and FUSE mounts), a `flock` on a file per dataset
does the same."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import struct
import sys
import weakref
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import anyio

from dsm.domain.jobs import Job, JobType
from dsm.engine.ledger import Ledger
from dsm.errors import DsmError

log = logging.getLogger(__name__)

LOCK_POLL = 0.2
SHARED_NAME = "datasets.lock"
OFD_SETLK: int | None = (
    getattr(fcntl, "F_OFD_SETLK", None) if sys.platform.startswith("linux") else None
)
# What a file system that cannot take OFD locks answers (then: a flock per dataset).
_NO_OFD = frozenset({errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})
# Linux's struct flock: type, whence, start, length, pid (0: OFD locks have no owning pid).
_FLOCK = struct.Struct("hhqqi4x")


class HeldLock:
    """A dataset's cross-process lock, held until `release`."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.release = release


def dataset_byte(name: str) -> int:
    """The dataset's byte in the shared file: a 62-bit hash of its name (two names on one byte
    would only wait for each other)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest()) >> 2


class LockFile:
    """The cross-process dataset locks of one holder (an engine). `ofd` False: a `flock` on a
    file per dataset (the platforms without OFD locks)."""

    def __init__(self, lock_dir: Path, ofd: bool = OFD_SETLK is not None) -> None:
        self.lock_dir = lock_dir
        self.ofd = ofd
        self._fd: int | None = None  # the shared file, opened at the first lock
        self._held: dict[int, int] = {}  # byte -> holders in this holder (a hash collision)
        self._opened = 0  # times the shared file was opened: a lock names the opening it took
        _OPEN.add(self)

    def try_lock(self, name: str) -> HeldLock | None:
        """The dataset's lock if no other holder has it now, else None."""
        if not self.ofd:
            return _try_flock(self.lock_dir / f"{name}.lock")
        if self._fd is None:
            self._fd = os.open(self.lock_dir / SHARED_NAME, os.O_RDWR | os.O_CREAT, 0o666)
            self._opened += 1
        byte = dataset_byte(name)
        if byte not in self._held:
            try:
                self._set(fcntl.F_WRLCK, byte)
            except (BlockingIOError, PermissionError):  # EAGAIN, EACCES: another holder's
                return None
            except OSError as exc:  # a file system without OFD locks: flock from now on
                if exc.errno not in _NO_OFD or self._held:
                    raise
                self.close()
                self.ofd = False
                return self.try_lock(name)
        self._held[byte] = self._held.get(byte, 0) + 1
        return HeldLock(partial(self._unlock, self._opened, byte))

    def renew(self) -> frozenset[int]:
        """Put the shared file back if it was deleted or replaced (a user clearing `.locks/`
        while dsm runs): the locks held are taken again on the file other processes now
        open, so they keep excluding them (they were held on a file nobody else would open).
        Returns the bytes another holder took meanwhile (this process was stopped)."""
        if self._fd is None:
            return frozenset()
        path = self.lock_dir / SHARED_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if _same_file(fd, self._fd):
            os.close(fd)
            return frozenset()
        log.warning("%s was deleted while dsm ran: made again", path)
        os.close(self._fd)  # and with it the locks on the old file
        self._fd = fd
        taken = set()
        for byte in self._held:
            try:
                self._set(fcntl.F_WRLCK, byte)
            except (BlockingIOError, PermissionError):  # EAGAIN, EACCES: another holder's
                taken.add(byte)
        return frozenset(taken)

    def close(self) -> None:
        """Let go of the shared file (and so of any lock still held on it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._held = None, {}

    def _unlock(self, opened: int, byte: int) -> None:
        if opened != self._opened or self._fd is None:  # closed since: nothing held any more
            return
        self._held[byte] -= 1
        if not self._held[byte]:
            del self._held[byte]
            self._set(fcntl.F_UNLCK, byte)

    def _set(self, kind: int, byte: int) -> None:
        assert self._fd is not None and OFD_SETLK is not None
        fcntl.fcntl(self._fd, OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class OwnerLock:
    """The file an engine holds locked while it runs (`ledger.owner_alive`: a free lock is a
    dead owner, whose jobs another process adopts). Deleted while held (`.locks/` cleared),
    anyone could lock a new file of that name and take the live engine's jobs for a dead
    one's (a running download was adopted and run twice at once): `renew` makes and locks it
    again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fds: list[int] = []  # the file held, and those that replaced it

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new name: no other holder
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)

    def renew(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            try:
                if _same_file(fd, self._fds[-1]):
                    return
            finally:
                os.close(fd)
        log.warning("%s was deleted while dsm ran: made again", self.path)
        self.acquire()

    def release(self) -> None:
        """Let go and remove the file (an engine that ended leaves no lock behind)."""
        self.path.unlink(missing_ok=True)
        for fd in self._fds:
            os.close(fd)
        self._fds = []


_OPEN: weakref.WeakSet[LockFile] = weakref.WeakSet()


def _close_in_child() -> None:
    """A forked child closes its copies of the shared files: the parent's locks stay held
    (its own descriptor still refers to the file), and those it takes later do not outlive
    it in the child."""
    for lock_file in list(_OPEN):
        lock_file.close()


os.register_at_fork(after_in_child=_close_in_child)


def _try_flock(path: Path) -> HeldLock | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return HeldLock(partial(_release_flock, fd))


def _release_flock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class DatasetLocks:
    def __init__(self, lock_dir: Path, ledger: Ledger) -> None:
        self.ledger = ledger
        self.file = LockFile(lock_dir)
        self._local: dict[str, anyio.Lock] = {}

    async def acquire(self, job: Job) -> HeldLock:
        """Wait for the dataset of `job`. A delete asks the other process that holds the
        dataset to cancel (as `c` in a dashboard does), rather than wait out its download."""
        name = job.dataset
        # fast_acquire: a free lock is taken without yielding (one event-loop round a job).
        await self._local.setdefault(name, anyio.Lock(fast_acquire=True)).acquire()
        asked = job.type != JobType.DELETE
        try:
            while (lock := self._try_lock(name)) is None:
                if not asked:
                    asked = True
                    await self.ledger.call(self.ledger.request_cancel, name)
                await anyio.sleep(LOCK_POLL)
            return lock
        except BaseException:
            self._local[name].release()
            raise

    def _try_lock(self, name: str) -> HeldLock | None:
        try:
            return self.file.try_lock(name)
        except OSError as exc:  # a lock file made a folder, another user's, a read-only disk
            where = exc.filename or self.file.lock_dir / SHARED_NAME
            raise DsmError(
                f"cannot lock the dataset in {where}: {exc.strerror or exc}; check the data "
                "home and its permissions"
            ) from None

    def release(self, name: str, lock: HeldLock) -> None:
        try:
            lock.release()
        finally:  # the dataset must not stay taken in this process whatever happened
            self._local[name].release()

    def renew(self, owner: OwnerLock, jobs: Iterable[Job]) -> list[str]:
        """The owner's lock file and the datasets' made again if `.locks/` was cleared (a
        stat or two a second, on the event loop). Returns the ids of `jobs` whose dataset
        another process took meanwhile: it found this one's lock files gone (this process
        was stopped), took it for dead and adopted its jobs; they must stop here."""
        try:
            self.file.lock_dir.mkdir(parents=True, exist_ok=True)
            owner.renew()
            taken = self.file.renew()
        except OSError as exc:  # a home gone read-only: the jobs' own errors say more
            log.warning("cannot renew the locks under %s: %s", self.file.lock_dir, exc)
            return []
        lost = [job for job in jobs if taken and dataset_byte(job.dataset) in taken]
        for name in sorted({job.dataset for job in lost}):
            log.error(
                "another dsm process took over %s while this one was stopped: its job here stops",
                name,
            )
        return [job.id for job in lost]

    def close(self) -> None:
        self.file.close()
