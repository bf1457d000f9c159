"""The dashboard: a Textual app over the job engine (imported only when the dashboard starts)."""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.timer import Timer
from textual.widgets import Footer, Header
from textual.worker import Worker, WorkerState

from dsm.config import Settings
from dsm.domain.jobs import JobStatus, JobType
from dsm.domain.model import Status
from dsm.domain.redact import redact_text
from dsm.engine.hubjob import refresh_upstream
from dsm.engine.thread import EngineThread
from dsm.errors import DsmError
from dsm.repository import Repository, StoreError
from dsm.tui.commands import ActionCommands, KeyAction
from dsm.tui.feed import DatasetReader, EngineFeed, JobChanged, StoreRead
from dsm.tui.state import SORTS, DashboardState
from dsm.widgets.dataset_table import SORTABLE, DatasetTable
from dsm.widgets.panels import DetailPane, Summary
from dsm.widgets.screens import ConfirmScreen, FilterBar, HelpScreen, JobLogScreen

FLUSH_INTERVAL = 0.25  # progress reaches the table at most 4 times a second
STORE_POLL_INTERVAL = 0.5  # other processes' writes show well within 2 s
ENGINE_START_TIMEOUT = 30.0
CONFIRM_NAMES = 5
FILTER_DELAY = 0.15

KEY_ACTIONS = (
    KeyAction("d", "d", "download", "Download", "download the highlighted or marked datasets"),
    KeyAction("f", "f", "force", "Force", "force a re-download (an update job)"),
    KeyAction("x", "x", "delete", "Delete", "delete the local files, after confirming"),
    KeyAction("c", "c", "cancel", "Cancel", "cancel the running or waiting job"),
    KeyAction("a", "a", "download_all", "All", "download every dataset not downloaded"),
    KeyAction("space", "space", "mark", "Mark", "mark or unmark a row; d f x c then act on marks"),
    KeyAction("slash", "/", "filter", "Filter", "filter on name, description, status (esc clears)"),
    KeyAction("s", "s", "sort", "Sort", "cycle the sort: name, status, size, progress"),
    KeyAction("enter", "enter", "toggle_detail", "Detail", "show or hide the detail pane"),
    KeyAction("l", "l", "job_log", "Log", "open the job log (all jobs, newest first)"),
    KeyAction("question_mark", "?", "help", "Help", "show every key and what it does"),
    KeyAction("q,ctrl+q", "q / ctrl+q", "quit_dashboard", "Quit", "quit (asks first if jobs run)"),
)

ACTION_NAMES = frozenset(k.action for k in KEY_ACTIONS)


class DashboardApp(App[int]):
    TITLE = "dsm"
    SUB_TITLE = "datasets for LLM evaluation"
    CSS_PATH = "dashboard.tcss"
    COMMANDS = App.COMMANDS | {ActionCommands}
    KEY_ACTIONS = KEY_ACTIONS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(k.key, k.action, k.label, show=k.footer, priority=k.key.startswith("q"))
        for k in KEY_ACTIONS
    ]

    def __init__(self, settings: Settings, repo: Repository) -> None:
        super().__init__()
        self.settings = settings
        self.repo = repo
        self.feed = EngineFeed(self.post_message)
        self.engine = EngineThread(settings, repo, [self.feed])
        self.state = DashboardState(self.engine.engine.owner)
        self._engine_lock = threading.Lock()
        self._engine_ready = threading.Event()
        self._stopping = threading.Event()
        self._changed: set[str] = set()
        self._loaded = False
        self._filter_timer: Timer | None = None
        # Held, not queried: messages still arriving while the app closes find them detached.
        self.table = DatasetTable(id="table")
        self.summary = Summary(id="summary")
        self.detail = DetailPane(id="detail")

    # -- layout and lifecycle ----------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Dashboard keys act on the main screen only, not under a modal."""
        return not (action in ACTION_NAMES and len(self.screen_stack) > 1)

    def compose(self) -> ComposeResult:
        yield Header()
        yield self.summary
        yield self.table
        yield self.detail
        yield FilterBar(id="filter")
        yield Footer()

    def on_mount(self) -> None:
        if self.settings.offline:
            self.sub_title = "OFFLINE (DSM_OFFLINE / HF_HUB_OFFLINE): no network requests"
        self._start_engine()
        self._poll_store()
        self._check_upstream()
        self.set_interval(FLUSH_INTERVAL, self._flush_updates)

    async def on_unmount(self) -> None:
        await asyncio.to_thread(self._stop_engine)

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

    @work(thread=True, group="store-poll", exit_on_error=False)
    def _poll_store(self) -> None:
        """Re-read the store whenever any process rewrote it (a stat per poll otherwise)."""
        seen: object = None
        reported = ""
        reader = DatasetReader(self.repo)
        while not self._stopping.is_set():
            try:
                identity = self.repo.identity
                if identity != seen or seen is None:
                    seen = identity
                    self.post_message(StoreRead(reader.read(), self.repo.jobs()))
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

    def _arrange(self) -> None:
        """Apply the filter and the sort order."""
        self.table.show(self.state.visible(), sorted_by=self.state.sort)

    def _show(self, name: str) -> None:
        self._changed.add(name)
        self.table.show_row(*self.state.row(name))

    @on(Worker.StateChanged)
    def _engine_failed(self, event: Worker.StateChanged) -> None:
        """An engine that cannot start (a proxy setting, a home it may not write) is said at
        once, with its cause, and the user is offered to quit."""
        if event.worker.name != "_start_engine" or event.state != WorkerState.ERROR:
            return
        cause = redact_text(str(event.worker.error))
        self.notify(f"the job engine failed to start: {cause}", severity="error", markup=False)

        def answered(yes: bool | None) -> None:
            if yes:  # the cause stays on the terminal after the dashboard is gone
                self.exit(return_code=1, message=f"dsm: error: the job engine failed: {cause}")

        question = "The job engine failed to start: no job can run. Quit dsm?"
        self.push_screen(ConfirmScreen(question, cause), answered)

    @on(StoreRead)
    def _store_read(self, message: StoreRead) -> None:
        change = self.state.apply_snapshot(message.datasets, message.jobs)
        if change.structural or not self._loaded:
            self._loaded = True
            self._reload()
        else:
            for name in change.names:
                self._show(name)
        if self.table.highlighted is not None:
            self._changed.add(self.table.highlighted)  # its job list may have grown

    @on(JobChanged)
    def _job_changed(self, message: JobChanged) -> None:
        job, ds = message.event.job, message.event.dataset
        if self.state.apply_job(job, ds):
            self._show(job.dataset)
        if job.status in (JobStatus.FAILED, JobStatus.TIMEOUT):
            self.notify(
                f"{job.type.value} {job.dataset} failed: {job.error}",
                title="job failed",
                severity="error",
                timeout=10,
                markup=False,
            )
        elif job.status == JobStatus.SKIPPED:
            self.notify(
                f"{job.dataset}: skipped, already downloaded (f downloads it again)",
                markup=False,
            )

    def _flush_updates(self) -> None:
        """Apply the progress ticks gathered since the last flush, and redraw what changed."""
        for job in self.feed.drain():
            if self.state.apply_job(job):
                self._show(job.dataset)
        if not self._changed:
            return
        self.summary.show(self.state.totals())
        if self.table.highlighted in self._changed:
            self._show_detail()
        self._changed.clear()

    def _show_detail(self) -> None:
        pane = self.detail
        name = self.table.highlighted
        if not pane.has_class("-open"):
            return
        if name is None or name not in self.state.datasets:
            pane.show(None, "", [], None)
            return
        ds = self.state.datasets[name]
        path = str(self.settings.home / ds.local_path)
        pane.show(ds, path, self.state.jobs_of(name), self.state.job_for(name))

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

    # -- talking to the engine (blocking calls: always from a thread) ------------------
    def _tell(self, text: str, severity: SeverityLevel = "information") -> None:
        """Notify from a worker thread."""
        self.call_from_thread(self.notify, text, severity=severity, markup=False)

    def _targets(self) -> list[str]:
        marked = sorted(self.state.marked)
        if marked:
            return marked
        name = self.table.highlighted
        return [name] if name is not None else []

    @work(thread=True, group="engine-calls", exit_on_error=False)
    def _submit(self, job_type: JobType, names: list[str]) -> None:
        if not self._engine_ready.wait(ENGINE_START_TIMEOUT):
            self._tell("the engine did not start", "error")
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
        if not self._engine_ready.wait(ENGINE_START_TIMEOUT):
            return
        idle = [n for n in names if not self.engine.cancel_dataset(n)]
        if idle:
            self._tell(f"nothing to cancel: {', '.join(idle)}", "warning")

    @work(thread=True, group="engine", exit_on_error=False)
    def _quit_cleanly(self) -> None:
        self._stop_engine()
        self.call_from_thread(self.exit, 0)

    # -- actions -----------------------------------------------------------------------
    def _act(self, job_type: JobType) -> None:
        names = self._targets()
        if names:
            self._submit(job_type, names)
            self._unmark(names)

    def _unmark(self, names: list[str]) -> None:
        for name in set(names) & self.state.marked:
            self.state.marked.discard(name)
            self._show(name)

    def action_download(self) -> None:
        self._act(JobType.DOWNLOAD)

    def action_force(self) -> None:
        self._act(JobType.UPDATE)

    def action_delete(self) -> None:
        names = self._targets()
        if not names:
            return
        shown = ", ".join(names[:CONFIRM_NAMES]) + (" …" if len(names) > CONFIRM_NAMES else "")
        question = f"Delete the local files of {len(names)} dataset(s)?"

        def answered(yes: bool | None) -> None:
            if yes:
                self._submit(JobType.DELETE, names)
                self._unmark(names)

        self.push_screen(ConfirmScreen(question, shown), answered)

    def action_cancel(self) -> None:
        names = self._targets()
        if names:
            self._cancel(names)
            self._unmark(names)

    def action_download_all(self) -> None:
        names = [n for n, ds in self.state.datasets.items() if ds.status != Status.DOWNLOADED]
        if not names:
            self.notify("every dataset is downloaded")
            return
        self._submit(JobType.DOWNLOAD, sorted(names))

    def action_mark(self) -> None:
        name = self.table.highlighted
        if name is not None:
            self.state.marked ^= {name}
            self._show(name)
            self.table.action_cursor_down()

    def action_filter(self) -> None:
        bar = self.query_one(FilterBar)
        bar.add_class("-open")
        bar.focus()

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

    def action_sort(self) -> None:
        self._sort_by(SORTS[(SORTS.index(self.state.sort) + 1) % len(SORTS)])

    def _sort_by(self, column: str) -> None:
        self.state.sort = column
        self._arrange()

    def action_toggle_detail(self) -> None:
        self.detail.toggle_class("-open")
        self._show_detail()

    def action_job_log(self) -> None:
        self.push_screen(JobLogScreen(self.state.jobs))

    def action_help(self) -> None:
        keys = [(k.shown_key, k.help) for k in KEY_ACTIONS]
        keys.append(("ctrl+p", "command palette: the same actions by name"))
        self.push_screen(HelpScreen(keys))

    def action_quit_dashboard(self) -> None:
        running = self.state.own_active
        if not running:
            self._quit_cleanly()
            return
        question = f"{running} job(s) are running or waiting. Quit anyway?"
        details = "They stop now, keep their partial files and resume when dsm starts again."

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify("stopping jobs…")
                self._quit_cleanly()

        self.push_screen(ConfirmScreen(question, details), answered)


def run_dashboard(settings: Settings, repo: Repository) -> int:
    """Run the dashboard until the user quits; returns the exit code."""
    app = DashboardApp(settings, repo)
    app.run()
    return app.return_code or 0
