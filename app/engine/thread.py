"""The engine on its own event loop in a background thread, with blocking thread-safe calls.

A UI (the Textual dashboard) keeps its own loop for drawing; the engine's network and store
work never runs there. Listeners are called on the engine's thread and must only hand data
over (a dict update, `post_message`).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from dsm.config import Settings
from dsm.domain.events import Listener
from dsm.domain.jobs import Job, JobType
from dsm.engine.engine import Engine
from dsm.repository import Repository


class EngineThread:
    def __init__(self, settings: Settings, repo: Repository, listeners: Iterable[Listener]) -> None:
        self.engine = Engine(settings, repo, listeners)
        # Quitting a UI mid-download suspends its jobs: the next start resumes them.
        self.engine.suspend_on_exit = True
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._running: AbstractContextManager[Engine] | None = None

    def start(self) -> None:
        """Start the loop thread, the workers, and adopt orphaned jobs (blocks until ready)."""
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        running = self._portal.wrap_async_context_manager(self.engine.running())
        try:
            running.__enter__()
        except BaseException:  # it never started: end the loop thread, so stop() has nothing
            self.stop()
            raise
        self._running = running

    def stop(self) -> None:
        """Cancel running jobs (partials are kept for resume), flush the store, end the thread."""
        if self._running is not None:
            self._running.__exit__(None, None, None)
            self._running = None
        if self._portal_cm is not None:
            self._portal_cm.__exit__(None, None, None)
            self._portal_cm = self._portal = None

    def _call(self, fn: Any, *args: Any) -> Any:
        if self._portal is None:
            raise RuntimeError("engine thread is not running")
        return self._portal.call(fn, *args)

    def submit_many(self, job_type: JobType, many: list[dict[str, Any]]) -> list[Job]:
        """Queue several jobs with one store write; raises BadInput when any params are bad."""
        jobs: list[Job] = self._call(self.engine.submit_many, job_type, many)
        return jobs

    def cancel_dataset(self, name: str) -> bool:
        return bool(self._call(self.engine.cancel_dataset, name))

    def cancel_all(self) -> None:
        """Cancel every job of this engine (its queued ones in one store write)."""
        self._call(self.engine.cancel_all)

    def pause(self, job_ids: list[str]) -> int:
        """Stop these jobs, keeping them waiting with their partial files; how many stopped."""
        return int(self._call(self.engine.pause, job_ids))

    def resume(self, job_ids: list[str]) -> list[Job]:
        """Queue paused jobs again."""
        jobs: list[Job] = self._call(self.engine.resume, job_ids)
        return jobs
