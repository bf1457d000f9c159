"""The dashboard's calls into the engine. They block (the engine runs on its own thread), so
each runs in a worker thread and reports back with a notification."""

from __future__ import annotations

import asyncio
import os
import termios
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.notifications import SeverityLevel
from textual.worker import Worker, WorkerState

from dsm.config import Settings
from dsm.domain.jobs import JobType
from dsm.domain.model import Status
from dsm.domain.redact import error_text
from dsm.engine.hubjob import refresh_upstream
from dsm.engine.liveness import MISSING
from dsm.engine.thread import EngineThread
from dsm.errors import DsmError
from dsm.repository import Repository
from dsm.tui.state import DashboardState
from dsm.widgets.panels import Summary
from dsm.widgets.screens import ConfirmScreen

ENGINE_START_TIMEOUT = 30.0
HANGUP_EXIT = 129  # as `--run-job` after SIGHUP: 128 + the signal's number
HANGUP_STOP_LIMIT = 60.0  # seconds the jobs get to suspend; the next start adopts the rest

if TYPE_CHECKING:
    from textual.app import App

    _Base = App[int]
else:
    _Base = object


class EngineCalls(_Base):
    """Mixed into the dashboard app: starting, stopping and driving the engine."""

    settings: Settings
    repo: Repository
    engine: EngineThread
    state: DashboardState
    summary: Summary
    _engine_lock: threading.Lock
    _engine_ready: threading.Event
    _stopping: threading.Event
    _loop: asyncio.AbstractEventLoop  # the app's, set at mount
    _loaded: bool  # the first store read is in: the rows are there
    _after_load: list[Callable[[], None]]  # actions asked for before it

    def _tell(self, text: str, severity: SeverityLevel = "information") -> None:
        raise NotImplementedError

    def say(self, text: str, severity: SeverityLevel = "information") -> None:
        raise NotImplementedError

    # -- actions on every dataset --------------------------------------------------------
    def _before_load(self, action: Callable[[], None]) -> bool:
        """Whether the rows are not read yet: then `action` runs once they are (else
        `a` pressed at start said "every dataset is downloaded" of an empty table)."""
        if self._loaded:
            return False
        if action not in self._after_load:  # pressed twice: said and done once
            self._after_load.append(action)
            self.say("reading the datasets: the action follows")
        return True

    def action_retry_failed(self) -> None:
        if self._before_load(self.action_retry_failed):
            return
        failed = sorted(n for n, ds in self.state.datasets.items() if ds.status == Status.ERROR)
        if failed:
            self._submit(JobType.DOWNLOAD, failed)
            self.say(f"retrying {len(failed)} failed dataset(s)")
        else:
            self.say("no failed dataset")

    def action_download_all(self) -> None:
        if self._before_load(self.action_download_all):
            return
        # A copy removed by hand is not downloaded either: its row says so (`missing on disk`).
        gone = self.state.disk.says
        rows = self.state.datasets.items()
        names = [n for n, ds in rows if ds.status != Status.DOWNLOADED or gone(n) == MISSING]
        if not names:
            self.say("every dataset is downloaded")
            return
        self._submit(JobType.DOWNLOAD, sorted(names))

    @property
    def engine_ready(self) -> bool:
        """The engine has started: jobs can be submitted (tests and scripts wait on this)."""
        return self._engine_ready.is_set()

    @property
    def notices(self) -> list[str]:
        """The messages of the notifications on screen now."""
        return [n.message for n in self._notifications]

    @work(thread=True, group="engine", exit_on_error=False)
    def _start_engine(self) -> None:
        with self._engine_lock:
            if not self._stopping.is_set():
                self.engine.start()
                self._engine_ready.set()

    @work(thread=True, group="upstream", exit_on_error=False)
    def _check_upstream(self) -> None:
        """Once per run: which Hub branches moved on (never offline); the store poll shows it."""
        refresh_upstream(self.settings, self.repo)

    def _stop_engine(self) -> None:
        """Suspend our jobs (partial files stay; the next start resumes them), end the thread."""
        self._stopping.set()
        with self._engine_lock:
            self.engine.stop()

    def quit_now(self) -> None:
        """Suspend every job in one store write and exit (q answered yes, SIGTERM)."""
        if self._stopping.is_set():
            return
        count = self.state.own_active
        if count:
            self.summary.update(Text(f"stopping {count} jobs…", style="bold"))
        self._quit_cleanly()

    def hung_up(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP. Its terminal open (a `kill -HUP`), dsm quits as on SIGTERM. Else the
        terminal is gone (a closed window, a lost ssh session): writes to it fail, Textual's
        output thread dies of it, and the loop then blocks for ever on its full queue, so a
        handler queued on the loop never ran and dsm lingered with its jobs held. This one
        is a signal.signal handler, run even then: nothing is left to draw or restore, the
        terminal's descriptors go to /dev/null, the jobs are suspended (the next start
        resumes them) and the process exits from another thread."""
        try:
            termios.tcgetattr(0)
        except termios.error:  # EIO: hung up
            pass
        else:
            self._loop.call_soon_threadsafe(self.quit_now)
            return
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        threading.Thread(target=self._exit_after_hangup, name="dsm-hangup", daemon=True).start()

    def _exit_after_hangup(self) -> None:
        threading.Timer(HANGUP_STOP_LIMIT, os._exit, (HANGUP_EXIT,)).start()
        try:
            self._stop_engine()
        finally:
            os._exit(HANGUP_EXIT)  # the loop may be blocked: no orderly exit to wait for

    @work(thread=True, group="quit", exit_on_error=False)
    def _quit_cleanly(self) -> None:
        self._stop_engine()
        self.call_from_thread(self.exit, 0)

    def _engine_up(self) -> bool:
        if self._engine_ready.wait(ENGINE_START_TIMEOUT):
            return True
        self._tell("the engine did not start", "error")
        return False

    @work(thread=True, group="engine-calls", exit_on_error=False)
    def _submit(self, job_type: JobType, names: list[str]) -> None:
        if not self._engine_up():
            return
        force = job_type == JobType.UPDATE
        try:  # one store write for all of them (`a` on 10,000 datasets)
            self.engine.submit_many(
                job_type, [{"dataset": name, "force_download": force} for name in names]
            )
        except DsmError as exc:
            self._tell(str(exc), "error")

    @work(thread=True, group="engine-calls", exit_on_error=False)
    def _cancel(self, names: list[str]) -> None:
        if not self._engine_up():
            return
        idle = [n for n in names if not self.engine.cancel_dataset(n)]
        if idle:
            self._tell(f"nothing to cancel: {', '.join(idle)}", "warning")

    @work(thread=True, group="engine-calls", exit_on_error=False)
    def _cancel_all(self) -> None:
        if self._engine_up():
            self.engine.cancel_all()

    @work(thread=True, group="engine-calls", exit_on_error=False)
    def _pause(self, job_ids: list[str]) -> None:
        if self._engine_up() and job_ids:
            count = self.engine.pause(job_ids)
            self._tell(f"paused {count} job(s): p resumes, partial files kept")

    @work(thread=True, group="engine-calls", exit_on_error=False)
    def _resume(self, job_ids: list[str]) -> None:
        if self._engine_up() and job_ids:
            self._tell(f"resumed {len(self.engine.resume(job_ids))} job(s)")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """An engine that cannot start (a proxy setting, a home it may not write) is said at
        once, with its cause, and the user is offered to quit."""
        if event.worker.name != "_start_engine" or event.state != WorkerState.ERROR:
            return
        cause = error_text(str(event.worker.error))
        self.notify(f"the job engine failed to start: {cause}", severity="error", markup=False)

        def answered(yes: bool | None) -> None:
            if yes:  # the cause stays on the terminal after the dashboard is gone
                self.exit(return_code=1, message=f"dsm: error: the job engine failed: {cause}")

        question = "The job engine failed to start: no job can run. Quit dsm?"
        self.push_screen(ConfirmScreen(question, cause), answered)
