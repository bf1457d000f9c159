"""Modal screens (confirm, help, job log) and the filter bar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.segment import Segment
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.geometry import Size
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input, Static

from dsm.domain.jobs import Job
from dsm.widgets.dataset_table import fit
from dsm.widgets.panels import job_cells


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: `y` confirms, `n` or escape cancels."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 64; max-width: 90%; height: auto; max-height: 80%;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    ConfirmScreen #question { text-style: bold; }
    ConfirmScreen #keys { margin-top: 1; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def __init__(self, question: str, details: str = "") -> None:
        super().__init__()
        self.question = question
        self.details = details

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.question), id="question")
            if self.details:
                yield Static(Text(self.details), id="details")
            yield Static("[b]y[/b] yes    [b]n[/b] / [b]esc[/b] no", id="keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class _Closable(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("q", "close", "Close", show=False),
    ]

    def action_close(self) -> None:
        self.dismiss(None)


class HelpScreen(_Closable):
    """Every key and what it does."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 72; max-width: 95%; height: auto; max-height: 90%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("question_mark", "close", "Close", show=False)]

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True, title="Keys", title_style="bold")
        table.add_column("key", style="bold cyan", no_wrap=True)
        table.add_column("what it does")
        for key, text in self.keys:
            table.add_row(Text(key), Text(text))
        with VerticalScroll():
            yield Static(table)
            yield Static(Text("esc, q or ? closes this screen", style="dim"))


class JobLog(ScrollView, can_focus=True):
    """Jobs, one a line, on the Line API: only the lines on screen are rendered, so 10,000
    jobs open as fast as ten. `show` swaps the list (the log is live)."""

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
    DEFAULT_CSS = "JobLog { scrollbar-size-vertical: 1; overflow-x: hidden; }"

    def __init__(self, max_attempts: int) -> None:
        super().__init__()
        self.max_attempts = max_attempts
        self.jobs: Sequence[Job] = ()
        self._dataset_width = self.COLUMNS[1][1]

    def show(self, jobs: Sequence[Job]) -> None:
        self.jobs = jobs
        # The dataset column fits the longest name (up to 24): the failure cause gets the rest.
        widest = max((len(j.dataset) for j in jobs), default=0)
        self._dataset_width = max(self.DATASET_MIN, min(self.COLUMNS[1][1], widest))
        self.virtual_size = Size(self.scrollable_content_region.width, len(jobs) + 1)
        self.refresh()

    def on_resize(self) -> None:
        self.show(self.jobs)

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
        index = -1 if y == 0 else self.scroll_offset.y + y - 1
        if index >= len(self.jobs):
            return Strip.blank(width, self.rich_style)
        line = self.line_text(index)
        line.truncate(width, overflow="ellipsis")
        segments = Segment.apply_style(line.render(self.app.console), self.rich_style)
        return Strip(segments).crop_extend(0, width, self.rich_style)


class JobLogScreen(Screen[None]):
    """All jobs, newest first; the app hands it the jobs again as they change. A full
    screen, not a modal: nothing of the dashboard has to be drawn (dimmed) beneath it."""

    DEFAULT_CSS = """
    JobLogScreen > Vertical { background: $surface; padding: 0 1; }
    JobLogScreen #log-title { height: 1; text-style: bold; background: $boost; }
    JobLogScreen JobLog { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,l", "close", "Close"),
    ]

    def __init__(self, jobs: Sequence[Job], max_attempts: int) -> None:
        super().__init__()
        self.log_view = JobLog(max_attempts)
        self.title_bar = Static(id="log-title")
        self._jobs = jobs

    def compose(self) -> ComposeResult:
        with Vertical():
            yield self.title_bar
            yield self.log_view

    def on_mount(self) -> None:
        self.show(self._jobs)
        self.log_view.focus()

    def action_close(self) -> None:
        self.dismiss(None)

    def show(self, jobs: Sequence[Job]) -> None:
        """The jobs, newest first."""
        self.title_bar.update(Text(f"Job log: {len(jobs)} jobs, newest first (esc closes)"))
        self.log_view.show(jobs)


class FilterBar(Input):
    """Filter as you type; escape clears the filter and hides the bar."""

    DEFAULT_CSS = "FilterBar { dock: bottom; display: none; } FilterBar.-open { display: block; }"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "clear", "Clear filter")]

    class Cleared(Message):
        """The user cleared the filter."""

        def __init__(self, bar: FilterBar) -> None:
            super().__init__()
            self.bar = bar

        @property
        def control(self) -> FilterBar:
            return self.bar

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(placeholder="filter: name, description or status", id=id)

    def action_clear(self) -> None:
        self.value = ""
        self.post_message(self.Cleared(self))
