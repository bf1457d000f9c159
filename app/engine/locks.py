"""One job per dataset at a time: in this process (an anyio lock) and across processes (a file
lock in the home's `.locks/`).

The file lock is a bare `flock` (what filelock's FileLock takes on Unix, so the two exclude
each other): taken once per job on the event loop, filelock's bookkeeping cost ~1 ms a job."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import anyio

from dsm.domain.jobs import Job, JobType
from dsm.engine.ledger import Ledger

LOCK_POLL = 0.2


class HeldLock:
    """A dataset's lock file, locked by this process until `release`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def try_lock(path: Path) -> HeldLock | None:
    """The lock at `path` if no other holder has it now, else None."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return HeldLock(fd)


class DatasetLocks:
    def __init__(self, lock_dir: Path, ledger: Ledger) -> None:
        self.lock_dir = lock_dir
        self.ledger = ledger
        self._local: dict[str, anyio.Lock] = {}

    async def acquire(self, job: Job) -> HeldLock:
        """Wait for the dataset of `job`. A delete asks the other process that holds the
        dataset to cancel (as `c` in a dashboard does), rather than wait out its download."""
        name = job.dataset
        # fast_acquire: a free lock is taken without yielding (one event-loop round a job).
        await self._local.setdefault(name, anyio.Lock(fast_acquire=True)).acquire()
        path = self.lock_dir / f"{name}.lock"
        asked = job.type != JobType.DELETE
        try:
            while (lock := try_lock(path)) is None:
                if not asked:
                    asked = True
                    await self.ledger.call(self.ledger.request_cancel, name)
                await anyio.sleep(LOCK_POLL)
            return lock
        except BaseException:
            self._local[name].release()
            raise

    def release(self, name: str, lock: HeldLock) -> None:
        lock.release()
        self._local[name].release()
