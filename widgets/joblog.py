"""The job log: every job, newest first, in the dashboard itself (mounted once, hidden until
`l`), drawn on the Line API so only the lines on screen are built."""

from __future__ import annotations

from typing import ClassVar, Protocol

from rich.segment import Segment
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.strip import Strip
from textual.widgets import Static

from dsm.domain.jobs import Job
from dsm.widgets.dataset_table import LineView, fit
from dsm.widgets.panels import job_cells


class Jobs(Protocol):
    """What the log reads its lines from: a list, or a view that builds each job when asked
    (at 10,000 jobs, building them all on every refresh cost more than drawing a screen)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Job: ...


class JobLog(LineView, can_focus=True):
    """Jobs, one a line, on the Line API: only the lines on screen are rendered, so 10,000
    jobs open as fast as ten. `show` swaps the jobs (the log is live)."""

    COLUMNS = (("type", 8), ("dataset", 24), ("status", 9), ("tries", 5), ("when", 16))
    DATASET_MIN = 7
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "scroll_up", "Up", show=False),
        Binding("down,j", "scroll_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,g", "scroll_home", "First", show=False),
        Binding("end,G", "scroll_end", "Last", show=False),
    ]
    DEFAULT_CSS = "JobLog { height: 1fr; scrollbar-size-vertical: 1; overflow-x: hidden; }"

    def __init__(self, max_attempts: int) -> None:
        super().__init__()
        self.max_attempts = max_attempts
        self.jobs: Jobs = []
        self._dataset_width = self.COLUMNS[1][1]

    def show(self, jobs: Jobs, name_width: int) -> None:
        """Show `jobs`; the dataset column fits `name_width` (the longest name, up to 24),
        the failure cause gets the rest."""
        self.jobs = jobs
        self._dataset_width = max(self.DATASET_MIN, min(self.COLUMNS[1][1], name_width))
        self._size_to_jobs()
        self.refresh()

    def _size_to_jobs(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.jobs) + 1)

    def on_resize(self) -> None:
        self._size_to_jobs()

    def line_text(self, index: int) -> Text:
        """The job at `index` as one line (index -1: the header)."""
        if index < 0:
            cells = [Text(label, style="bold") for label, _ in self.COLUMNS]
            cells.append(Text("last failure", style="bold"))
        else:
            cells = job_cells(self.jobs[index], self.max_attempts, with_dataset=True)
        line = Text(no_wrap=True, end="")
        for cell, (label, width) in zip(cells, self.COLUMNS, strict=False):
            line.append_text(fit(cell, self._dataset_width if label == "dataset" else width))
            line.append(" ")
        line.append_text(cells[-1])
        return line

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        style = self.base_style
        index = -1 if y == 0 else self.scroll_offset.y + y - 1
        if index >= len(self.jobs):
            return Strip.blank(width, style)
        line = self.line_text(index)
        line.truncate(width, overflow="ellipsis")
        segments = Segment.apply_style(line.render(self.app.console), style)
        return Strip(segments).crop_extend(0, width, style)


class JobLogPane(Vertical):
    """The log with its title line. The app shows it in the table's place: a widget already
    mounted, so opening it is a layout change, not a new screen to compose and style."""

    DEFAULT_CSS = """
    JobLogPane { display: none; height: 1fr; background: $surface; padding: 0 1; }
    JobLogPane #log-title { height: 1; text-style: bold; background: $boost; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,l", "close", "Close log")]

    class Closed(Message):
        """The user closed the log."""

    def __init__(self, max_attempts: int, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.log_view = JobLog(max_attempts)
        self.title_bar = Static(id="log-title")
        self._title = ""

    def compose(self) -> ComposeResult:
        yield self.title_bar
        yield self.log_view

    def show(self, jobs: Jobs, name_width: int) -> None:
        """The jobs, newest first."""
        title = f"Job log: {len(jobs)} jobs, newest first (esc closes)"
        if title != self._title:  # an update lays the pane out again: only when it changed
            self._title = title
            self.title_bar.update(Text(title))
        self.log_view.show(jobs, name_width)

    def action_close(self) -> None:
        self.post_message(self.Closed())
