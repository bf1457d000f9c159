"""The store thread: every store call of an engine runs in one worker thread, one at a time
and in order, so the event loop never waits on disk (`call`), and most job records are
batched into one write of the file (`defer`).

Batching (issue 17): db.json is one JSON file rewritten whole on every write, so a write per
job state change made 10,000 small downloads O(n^2). What a job records on its way (claimed,
downloading, installed, ended, progress) is `defer`red instead: applied to the store's tables
at once, so every later call sees it, and written to the file for all jobs together by the
committer at most COMMIT_DELAY later (or by the next `call` that writes: a submission, a
cancel request). Other processes see those changes that much later. A crash loses at most
them: the jobs are still unfinished in the file, so the next start adopts them; a file
installed meanwhile is proven again by its hash (its install record is removed only after the
commit: `after_commit`), never taken on trust.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio

from dsm.repository import Repository, StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")
COMMIT_DELAY = 0.2  # seconds deferred changes wait at most (other processes wait as long)
COMMIT_SHARE = 4  # ... or this many times the last write took: the store thread stays mostly idle
COMMIT_MAX = 5.0  # ... but never longer: other processes give up on the lock after 30 s


class StoreThread:
    """The queue of an engine's store calls and the committer of its deferred changes (the
    Ledger's base: what it records goes through here)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._limiter = anyio.CapacityLimiter(1)
        self._after: list[Callable[[], None]] = []
        self._delay = COMMIT_DELAY
        self._failing = False  # the last store write failed: said once (`failed`)
        self.lost: StoreError | None = None  # the first failure that lost changes, if any

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call in the store thread, after every store call queued before it; what
        it writes is in the file when it returns (with everything deferred before it)."""
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._limiter)

    async def defer(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`call`, but what it writes reaches the file with the next commit (module doc).

        While a deferred transaction is open and no thread is in the store, the change runs
        here on the event loop: it only touches the tables in memory (and at most stats a
        file), and a thread hop costs more than the change (~0.1-0.3 ms, several per job).
        Changes of different jobs need no order between them; a task's own calls keep theirs
        (it awaited the earlier ones)."""
        change = partial(fn, *args, **kwargs)
        with self.repo.open_deferred() as ready:
            if ready:
                return self._deferred(change)
        return await self.call(self._deferred, change)

    def _deferred(self, fn: Callable[[], T]) -> T:
        with self.repo.transaction(defer=True):
            return fn()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the store thread once what was deferred so far is in the file."""
        self._after.append(fn)

    async def committer(self) -> None:
        """Write the deferred changes every COMMIT_DELAY (longer when writes are slow)."""
        while True:
            await anyio.sleep(self._delay)
            await self.commit()

    async def on_terminal_stop(self) -> None:
        """Ctrl-Z (SIGTSTP): write what is deferred and let go of the store's lock before the
        process stops; a process stopped holding it made every other one on the home wait,
        then fail at the 30 s lock timeout. No store call starts until the process runs
        again. Only where signals reach this loop (the main thread: headless, serve)."""
        if threading.current_thread() is not threading.main_thread():
            return  # the dashboard's engine: its terminal is raw, ctrl-Z a key
        with anyio.open_signal_receiver(signal.SIGTSTP) as signals:
            async for _ in signals:
                async with self._limiter:
                    try:
                        await anyio.to_thread.run_sync(self.repo.flush)
                    except StoreError as exc:
                        self.failed(exc)
                    os.kill(os.getpid(), signal.SIGSTOP)  # what SIGTSTP would have done

    async def commit(self) -> None:
        """Write the deferred changes now, then run the `after_commit` calls they allow.
        A failed write is logged (`failed`): its changes are lost as in a crash, and the
        jobs they concerned are adopted by the next start."""
        after, self._after = self._after, []
        try:
            with anyio.CancelScope(shield=True):
                wrote = await self.call(self._commit, after)
        except StoreError as exc:
            self.failed(exc)
        else:
            self._written(wrote)

    def failed(self, exc: StoreError, lost: bool = True) -> None:
        """A store write failed (`lost`: changes with it). Said once per streak of failures:
        a full disk fails every commit, several a second, each with the same line."""
        if not self._failing:
            log.error("cannot write the store: %s", exc)
        self._failing = True
        if lost and self.lost is None:
            self.lost = exc

    def _written(self, wrote: bool) -> None:
        if wrote and self._failing:
            self._failing = False
            log.warning(
                "the store is written again; what could not be written meanwhile is lost"
                " (the next start checks those jobs again)"
            )

    def abandon(self) -> None:
        """The engine is gone (normally after `close`): write what is still deferred, so no
        change is left unwritten with the store's lock held (blocking: only at exit)."""
        try:
            wrote = self._commit(self._after)
        except StoreError as exc:
            self.failed(exc)
        else:
            self._written(wrote)
        self._after = []

    def _commit(self, after: list[Callable[[], None]]) -> bool:
        """Whether the file was written (a commit with nothing deferred writes nothing)."""
        # The write alone sets the next delay: timed from the queue, a commit behind a call
        # that waited for another process's lock held the lock several times that long.
        started = time.monotonic()
        wrote = self.repo.pending
        self.repo.flush()
        took = time.monotonic() - started
        self._delay = min(COMMIT_MAX, max(COMMIT_DELAY, COMMIT_SHARE * took))
        for fn in after:
            try:
                fn()
            except OSError as exc:  # a leftover record only costs a re-hash at the next start
                log.warning("after the store write: %s", exc)
        return wrote
