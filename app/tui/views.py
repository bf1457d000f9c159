"""What the dashboard shows and how: the row order (filter, sort), the detail pane, the job
log and the help screen. Mixed into the dashboard app, which keeps the message handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsm.config import Settings
from dsm.tui.keys import KEY_ACTIONS, MOVES
from dsm.tui.state import SORTS, DashboardState
from dsm.widgets.dataset_table import DatasetTable
from dsm.widgets.joblog import JobLogPane
from dsm.widgets.panels import DetailPane
from dsm.widgets.screens import FilterBar, HelpScreen

if TYPE_CHECKING:
    from textual.app import App

    _Base = App[int]
else:
    _Base = object


class Views(_Base):
    """Mixed into the dashboard app: arranging rows and opening panes."""

    settings: Settings
    state: DashboardState
    table: DatasetTable
    detail: DetailPane
    job_log: JobLogPane
    _changed: set[str]

    # -- filter and sort ---------------------------------------------------------------
    def _arrange(self) -> None:
        """Apply the filter and the sort order."""
        self.table.show(self.state.visible(), self.state.sort, self.state.reverse)
        self._changed.add("")  # the summary's "shown" count

    def action_filter(self) -> None:
        """Open the filter bar and focus it now: `focus()` would only queue the change, and
        keys already behind `/` would reach the table as actions (`d` downloads)."""
        bar = self.query_one(FilterBar)
        bar.add_class("-open")
        bar.screen.set_focus(bar)

    def action_sort(self) -> None:
        self._sort_by(SORTS[(SORTS.index(self.state.sort) + 1) % len(SORTS)])

    def action_reverse_sort(self) -> None:
        self._sort_by(self.state.sort)

    def _sort_by(self, column: str) -> None:
        """Sort by `column`; asked again for the same column, reverse the order."""
        self.state.reverse = column == self.state.sort and not self.state.reverse
        self.state.sort = column
        self._arrange()

    # -- panes and screens -------------------------------------------------------------
    def action_toggle_detail(self) -> None:
        self.detail.toggle_class("-open")
        self._show_detail()

    def _show_detail(self) -> None:
        pane = self.detail
        name = self.table.highlighted
        if not pane.has_class("-open"):
            return
        if name is None or name not in self.state.datasets:
            pane.show(None, "", [], None, self.state.max_attempts)
            return
        ds = self.state.datasets[name]
        path = str(self.settings.home / ds.local_path)
        jobs, live = self.state.jobs_of(name), self.state.job_for(name)
        on_disk = self.state.disk.text(name)
        pane.show(ds, path, jobs, live, self.state.max_attempts, on_disk=on_disk)

    @property
    def log_open(self) -> bool:
        """The job log is on screen (in the table's place)."""
        return bool(self.job_log.display)

    def action_job_log(self) -> None:
        """Open the job log, or close it."""
        self.show_log(not self.log_open)

    def show_log(self, opening: bool) -> None:
        """Show the job log in the table's place, or the table again. The log is mounted with
        the dashboard: pushing a screen cost ~0.3 s at 10,000 jobs (compose, styles, a full
        layout)."""
        if opening == self.log_open:  # a second close key typed before the first was seen
            return
        if opening:
            self.refresh_log(force=True)
        for widget in (self.table, self.detail):
            # Closed: the stylesheet decides again (the detail pane shows if it was open).
            widget.styles.display = "none" if opening else None
        self.job_log.display = opening
        (self.job_log.log_view if opening else self.table).focus()

    def refresh_log(self, force: bool = False) -> None:
        """Hand the log the jobs as they are now (it draws only the lines on screen)."""
        if force or self.log_open:
            self.job_log.show(self.state.log_jobs(), self.state.log_name_width)

    def action_help(self) -> None:
        keys = [(k.shown_key, k.help) for k in KEY_ACTIONS]
        self.push_screen(HelpScreen([*keys, *MOVES]))
