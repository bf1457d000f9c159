"""The dashboard: a Textual app over the job engine (imported only when the dashboard starts)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.timer import Timer
from textual.widgets import Footer, Header

from dsm.config import Settings
from dsm.domain.display import is_paused, job_notice
from dsm.domain.jobs import JobType
from dsm.domain.redact import error_text
from dsm.engine.thread import EngineThread
from dsm.repository import Repository, StoreError
from dsm.tui.commands import ActionCommands
from dsm.tui.control import EngineCalls
from dsm.tui.feed import (
    CopiesSeen,
    CopyProbe,
    EngineFeed,
    HeapFreezer,
    JobChanged,
    StoreRead,
    StoreWatch,
)
from dsm.tui.keys import ACTION_NAMES, KEY_ACTIONS, KEY_BINDINGS, OVER_LOG
from dsm.tui.state import DashboardState
from dsm.tui.views import Views
from dsm.widgets.dataset_table import SORTABLE, DatasetTable
from dsm.widgets.joblog import JobLogPane
from dsm.widgets.panels import DetailPane, Summary
from dsm.widgets.screens import ConfirmScreen, FilterBar

FLUSH_INTERVAL = 0.25  # progress reaches the table at most 4 times a second
STORE_POLL_INTERVAL = 0.5  # other processes' writes show well within 2 s
CONFIRM_NAMES = 5
FILTER_DELAY = 0.15
NOTIFY_SECONDS = 6
# How long a busy thread (the store poll, a transfer) keeps the GIL before the UI thread gets
# it: every turn of the event loop waits up to this long for it (Python's default: 5 ms).
UI_SWITCH_INTERVAL = 0.001


class DashboardApp(EngineCalls, Views, App[int]):
    TITLE = "dsm"
    SUB_TITLE = "datasets for LLM evaluation"
    CSS_PATH = "dashboard.tcss"
    COMMANDS = App.COMMANDS | {ActionCommands}
    KEY_ACTIONS = KEY_ACTIONS
    BINDINGS: ClassVar[list[BindingType]] = [
        *KEY_BINDINGS,
        # ctrl+c quits like q, even from the filter bar (Textual's own ctrl+c only hints).
        Binding("ctrl+q,ctrl+c", "quit_dashboard", "Quit", show=False, priority=True),
    ]

    def __init__(self, settings: Settings, repo: Repository) -> None:
        super().__init__()
        self.settings = settings
        self.repo = repo
        self.feed = EngineFeed(self.post_message)
        self.engine = EngineThread(settings, repo, [self.feed])
        self.state = DashboardState(self.engine.engine.owner, settings.max_retries + 1)
        self._engine_lock = threading.Lock()
        self._engine_ready = threading.Event()
        self._stopping = threading.Event()
        self._changed: set[str] = set()
        self._loaded = False
        self._after_load: list[Callable[[], None]] = []  # keys pressed before it
        self._filter_timer: Timer | None = None
        self._heap = HeapFreezer()
        self._switch_interval = sys.getswitchinterval()
        # Held, not queried: messages still arriving while the app closes find them detached.
        self.table = DatasetTable(id="table")
        self.summary = Summary(id="summary")
        self.detail = DetailPane(id="detail")
        self.job_log = JobLogPane(self.state.max_attempts, id="joblog")

    # -- layout and lifecycle ----------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Dashboard keys act on the table: none under a modal; over the job log only those
        that open a screen, close the log or quit."""
        if action not in ACTION_NAMES:
            return True
        return len(self.screen_stack) == 1 and (not self.log_open or action in OVER_LOG)

    def compose(self) -> ComposeResult:
        yield Header()
        yield self.summary
        yield self.table
        yield self.detail
        yield self.job_log
        yield FilterBar(id="filter")
        yield Footer()

    def on_mount(self) -> None:
        if self.settings.offline:
            self.sub_title = "OFFLINE (DSM_OFFLINE / HF_HUB_OFFLINE): no network requests"
        # Quit as `q` does, so the terminal is restored: the default handler kills the
        # process in the alternate screen with the mouse reporting on.
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGTERM, self.quit_now)
        self._sighup_before = signal.signal(signal.SIGHUP, self.hung_up)
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(UI_SWITCH_INTERVAL)
        self._start_engine()
        self._poll_store()
        self._check_upstream()
        self.set_interval(FLUSH_INTERVAL, self._flush_updates)
        self.set_interval(1.0, self._tick)

    async def on_unmount(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        await asyncio.to_thread(self._stop_engine)
        signal.signal(signal.SIGHUP, self._sighup_before)  # not a dead app's handler
        sys.setswitchinterval(self._switch_interval)

    @work(thread=True, group="store-poll", exit_on_error=False)
    def _poll_store(self) -> None:
        """Re-read the store whenever any process rewrote it (a stat per poll otherwise)."""
        reported = ""
        watch = StoreWatch(self.repo, self.settings.lock_dir, self.state.own_engine)
        probe = CopyProbe(self.settings.home)
        while not self._stopping.is_set():
            try:
                read = watch.poll()
                if read is not None:
                    self.post_message(read)
                if probe.look(watch.datasets):  # copies changed by hand: the store cannot say
                    self.post_message(CopiesSeen(probe.seen))
            except StoreError as exc:
                if str(exc) != reported:
                    reported = str(exc)
                    self._tell(f"cannot read the store: {exc}", "error")
            self._stopping.wait(STORE_POLL_INTERVAL)

    # -- feeding the view --------------------------------------------------------------
    def _reload(self) -> None:
        """Every row from the state: at start and when datasets appear or vanish."""
        self.table.set_data(self.state.rows())
        self._arrange()
        self._changed.update(self.state.datasets)

    def _show(self, name: str) -> None:
        if self.table.show_row(self.state.row(name)):
            self._changed.add(name)

    @on(StoreRead)
    def _store_read(self, message: StoreRead) -> None:
        change = self.state.apply_snapshot(message.datasets, message.jobs, message.dead)
        if change.structural or not self._loaded:
            first, self._loaded = not self._loaded, True
            self._reload()
            if first:
                pending, self._after_load = self._after_load, []
                for action in pending:
                    action()
        else:
            for name in change.names:
                self._show(name)
        self._changed.add("")  # the job log
        if self.table.highlighted is not None:
            self._changed.add(self.table.highlighted)  # its job list may have grown
        self._heap.after_read(len(message.datasets) + len(message.jobs))

    @on(CopiesSeen)
    def _copies_seen(self, message: CopiesSeen) -> None:
        for name in self.state.disk.apply(message.seen):
            self._show(name)

    @on(JobChanged)
    def _job_changed(self, message: JobChanged) -> None:
        job, ds = message.event.job, message.event.dataset
        if self.state.apply_job(job, ds):
            self._show(job.dataset)
        self._changed.add("")
        if notice := job_notice(job):
            self.say(notice[0], "error" if notice[1] else "information")

    def _flush_updates(self) -> None:
        """Apply the progress ticks gathered since the last flush, and redraw what changed."""
        if self._stopping.is_set():  # "stopping N jobs…" stays up until the exit
            return
        for job in self.feed.drain():
            if self.state.apply_job(job):
                self._show(job.dataset)
        for name in self.state.ticking():  # countdowns and warming rates
            self._show(name)
        if not self._changed:
            return
        if self.state.needs_resort(self._changed):
            self._arrange()
        self.summary.show(self.state.totals(self.table.row_count))
        if self.table.highlighted in self._changed:
            self._show_detail()
        self._changed.clear()

    @property
    def settled(self) -> bool:
        """Every change so far has reached the table, summary and panes (tests wait on it)."""
        return not self._changed and not self.feed.pending

    def _tick(self) -> None:
        self.state.tick()
        self._changed.add("")
        self.refresh_log()  # once a second: a screen of lines (~10 ms), whatever the jobs

    @on(JobLogPane.Closed)
    def _log_closed(self) -> None:
        self.show_log(False)

    @on(DatasetTable.RowHighlighted, "#table")
    def _highlighted(self) -> None:
        self._show_detail()

    @on(DatasetTable.RowSelected, "#table")
    def _selected(self) -> None:
        self.action_toggle_detail()

    @on(DatasetTable.HeaderSelected, "#table")
    def _header(self, message: DatasetTable.HeaderSelected) -> None:
        if message.column in SORTABLE:
            self._sort_by(message.column)

    def _tell(self, text: str, severity: SeverityLevel = "information") -> None:
        """Notify from a worker thread."""
        self.call_from_thread(self.say, text, severity)

    def say(self, text: str, severity: SeverityLevel = "information") -> None:
        """A one-line notification; never markup, never a terminal control (errors quote
        servers)."""
        self.notify(error_text(text), severity=severity, timeout=NOTIFY_SECONDS, markup=False)

    # -- actions on rows ---------------------------------------------------------------
    def _targets(self) -> list[str]:
        marked = sorted(self.state.marked)
        if marked:
            return marked
        name = self.table.highlighted
        return [name] if name is not None else []

    def _act(self, job_type: JobType, names: list[str] | None = None) -> None:
        names = self._targets() if names is None else names
        if names:
            self._submit(job_type, names)
            self._unmark(names)

    def _unmark(self, names: list[str]) -> None:
        for name in set(names) & self.state.marked:
            self.state.marked.discard(name)
            self._show(name)

    def _ask(self, question: str, details: str, then: object) -> None:
        def answered(yes: bool | None) -> None:
            if yes and callable(then):
                then()

        self.push_screen(ConfirmScreen(question, details), answered)

    def action_download(self) -> None:
        self._act(JobType.DOWNLOAD)

    def action_force(self) -> None:
        self._act(JobType.UPDATE)

    def action_verify(self) -> None:
        self._act(JobType.VERIFY)

    def action_delete(self) -> None:
        names = self._targets()
        if names:
            shown = ", ".join(names[:CONFIRM_NAMES]) + (" …" if len(names) > CONFIRM_NAMES else "")
            question = f"Delete the local files of {len(names)} dataset(s)?"
            self._ask(question, shown, lambda: self._act(JobType.DELETE, names))

    def action_cancel(self) -> None:
        names = self._targets()
        if names:
            self.state.ask(names, "cancel")
            for name in names:
                self._show(name)
            self._cancel(names)
            self._unmark(names)

    def action_cancel_all(self) -> None:
        count = self.state.own_active
        if not count:
            self.say("no job to cancel")
            return
        self._ask(f"Cancel all {count} job(s)?", "Partial files are kept.", self._cancel_all)

    def action_pause(self) -> None:
        jobs = [j for n in self._targets() for j in self.state.live.get(n, {}).values()]
        paused = [j.id for j in jobs if is_paused(j)]
        if paused:
            self._resume(paused)
        else:
            self._pause([j.id for j in jobs])
        if not jobs:
            self.say("no job to pause or resume here", "warning")

    def action_pause_all(self) -> None:
        self._pause([j.id for j in self.state.own_jobs() if not is_paused(j)])

    def action_resume_all(self) -> None:
        self._resume([j.id for j in self.state.own_jobs() if is_paused(j)])

    def action_mark(self) -> None:
        name = self.table.highlighted
        if name is not None:
            self.state.marked ^= {name}
            self._show(name)
            self.table.action_cursor_down()

    def action_clear_marks(self) -> None:
        """esc on the table: the marks, or with none the filter the bar still shows (after
        `enter`, esc reached the table and the filter stayed, its bar open)."""
        bar = self.query_one(FilterBar)
        if self.state.marked:
            self._unmark(list(self.state.marked))
        elif bar.has_class("-open"):
            bar.action_clear()

    def action_copy_path(self) -> None:
        name = self.table.highlighted
        if name is None:
            return
        path = str(self.settings.home / self.state.datasets[name].local_path)
        self.copy_to_clipboard(path)  # OSC 52: works over ssh and in tmux (set-clipboard on)
        self.say(f"copied: {path}")

    # -- filter, sort, panes -----------------------------------------------------------
    @on(FilterBar.Changed, "#filter")
    def _filter_changed(self, message: FilterBar.Changed) -> None:
        self.state.filter = message.value
        # Re-filtering 10,000 rows takes a few hundred ms: do it once typing pauses.
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(FILTER_DELAY, self._arrange)

    @on(FilterBar.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    @on(FilterBar.Cleared, "#filter")
    def _filter_cleared(self) -> None:
        self.query_one(FilterBar).remove_class("-open")
        self.table.focus()

    def action_quit_dashboard(self) -> None:
        running = self.state.own_active
        if not running:
            self.quit_now()
            return
        question = f"{running} job(s) are running or waiting. Quit anyway?"
        details = "They stop now, keep their partial files and resume when dsm starts again."
        self._ask(question, details, self.quit_now)


def run_dashboard(settings: Settings, repo: Repository) -> int:
    """Run the dashboard until the user quits; returns the exit code."""
    app = DashboardApp(settings, repo)
    app.run()
    return app.return_code or 0
