"""One job per dataset at a time: in this process (an anyio lock) and across processes (a file
lock in the home's `.locks/`)."""

from __future__ import annotations

from pathlib import Path

import anyio
from filelock import FileLock, Timeout

from dsm.domain.jobs import Job, JobType
from dsm.engine.ledger import Ledger

LOCK_POLL = 0.2


class DatasetLocks:
    def __init__(self, lock_dir: Path, ledger: Ledger) -> None:
        self.lock_dir = lock_dir
        self.ledger = ledger
        self._local: dict[str, anyio.Lock] = {}

    async def acquire(self, job: Job) -> FileLock:
        """Wait for the dataset of `job`. A delete asks the other process that holds the
        dataset to cancel (as `c` in a dashboard does), rather than wait out its download."""
        name = job.dataset
        await self._local.setdefault(name, anyio.Lock()).acquire()
        lock = FileLock(self.lock_dir / f"{name}.lock", thread_local=False)
        asked = job.type != JobType.DELETE
        try:
            while True:
                try:
                    lock.acquire(timeout=0)
                    return lock
                except Timeout:
                    if not asked:
                        asked = True
                        await self.ledger.call(self.ledger.request_cancel, name)
                    await anyio.sleep(LOCK_POLL)
        except BaseException:
            self._local[name].release()
            raise

    def release(self, name: str, lock: FileLock) -> None:
        lock.release()
        self._local[name].release()
