"""The summary line and the detail pane: plain views over data the app hands them."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from dsm import humanize
from dsm.domain.display import (
    Totals,
    retry_text,
    short_cause,
    shown_progress,
    source_text,
    sparkline,
)
from dsm.domain.jobs import Job, JobStatus
from dsm.domain.model import Dataset
from dsm.domain.redact import error_text
from dsm.domain.terminal import printable
from dsm.widgets.dataset_table import COLOUR, MONO

DETAIL_JOBS = 5
SPARK_WIDTH = 12  # the last minute, five seconds a cell
Part = tuple[int, str, str]  # (priority: 1 is kept longest, text, style role)


def summary_parts(t: Totals) -> list[list[Part]]:
    """The summary's groups of parts, each part with the priority it is kept by when the
    line is too narrow."""
    counts: list[Part] = [
        (1, f"{n} {label}", role)
        for n, label, role in (
            (t.downloading, "downloading", "downloading"),
            (t.queued, "queued", "queued"),
            (t.retrying, "retrying", "retrying"),
            (t.paused, "paused", "paused"),
            (t.failed, "failed", "error-text"),
        )
        if n
    ]
    if not t.active and not t.paused:
        counts = [
            (1, f"{t.datasets} datasets", ""),
            (2, f"{t.downloaded} downloaded", "downloaded"),
            *[p for p in counts if p[2] == "error-text"],
            (2, f"{humanize.size(t.bytes_on_disk)} on disk", ""),
            *([(1, f"{t.missing} missing on disk", "error-text")] if t.missing else []),
        ]
    groups = [counts]
    if t.active:
        transfer: list[Part] = []
        if t.bytes_total and not t.sizes_unknown:  # "x of y" of some jobs reads as of all
            done, total = humanize.size(t.bytes_done), humanize.size(t.bytes_total)
            transfer.append((2, f"{done} of {total}", ""))
        transfer.append((1, humanize.rate(t.rate) if t.rate else "0 B/s", ""))
        if t.eta_s is not None:
            transfer.append((1, f"ETA {humanize.duration(t.eta_s)}", ""))
        if any(t.history):
            transfer.append((3, sparkline(t.history, SPARK_WIDTH), "downloading"))
        groups.append(transfer)
    view: list[Part] = []
    if t.shown != t.datasets:
        view.append((1, f"{t.shown} of {t.datasets} shown", ""))
    if t.marked:
        view.append((1, f"{t.marked} marked", "mark"))
    if view:
        groups.append(view)
    return groups


def summary_line(t: Totals, width: int, palette: dict[str, str]) -> Text:
    """One line of at most `width` cells: parts of the lowest priority drop out first."""
    groups = summary_parts(t)
    for worst in (3, 2, 1):
        line = Text()
        for group in filter(None, ([p for p in g if p[0] <= worst] for g in groups)):
            if line:
                line.append(" | ", style="dim")
            for i, (_, text, role) in enumerate(group):
                if i:
                    line.append(" · ", style="dim")
                line.append(text, style=palette.get(role, ""))
        if line.cell_len <= width or worst == 1:
            return line
    raise AssertionError("unreachable")


class Summary(Static):
    """One line: what the jobs do, how far and how fast they are, what the view shows."""

    DEFAULT_CSS = "Summary { height: 1; padding: 0 1; background: $boost; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("loading…", id=id)
        self._shown: tuple[Totals, int] | None = None
        self.totals: Totals | None = None

    def show(self, t: Totals) -> None:
        self.totals = t
        width = self.content_region.width or 78
        if (t, width) == self._shown:
            return
        self._shown = (t, width)
        roles = {**(MONO if self.app.no_color else COLOUR)}
        palette = {str(k): v for k, v in roles.items()}
        self.update(summary_line(t, width, palette))

    def on_resize(self) -> None:
        if self.totals is not None:
            self.show(self.totals)


def _value(v: object) -> Text:
    """A field as shown: catalogue text (a description) and servers' text (an error) must not
    drive the terminal (an OSC in a description set its window title)."""
    return Text("-" if v is None or v == "" else printable(str(v)))


def job_cells(job: Job, max_attempts: int, with_dataset: bool) -> list[Text]:
    """A job as cells: type, (dataset,) status, attempts, when, and the cause of its last
    failure (a retry's countdown while it waits); user strings as Text."""
    style = "green" if job.status.ok else ("cyan" if not job.status.finished else "bold red")
    cause = (
        retry_text(job, max_attempts, None)
        if job.status == JobStatus.RETRYING
        else short_cause(job.error)
    )
    cells = [Text(job.type.value)]
    if with_dataset:
        cells.append(Text(job.dataset))
    return [
        *cells,
        Text(job.status.value, style=style),
        # A running job is on its first attempt at least (the count moves when it fetches).
        Text(str(max(job.attempts, int(job.status == JobStatus.RUNNING))), justify="right"),
        Text(humanize.when(job.finished_ms or job.started_ms or job.created_ms)),
        Text(cause, style="red" if job.status.finished and not job.status.ok else ""),
    ]


def job_table(jobs: Sequence[Job], max_attempts: int) -> Table:
    """A dataset's jobs as a table (the detail pane)."""
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
    for label in ("type", "status", "tries", "when"):
        table.add_column(label, justify="right" if label == "tries" else "left")
    table.add_column("last failure", overflow="fold", ratio=1)
    for job in jobs:
        table.add_row(*job_cells(job, max_attempts, with_dataset=False))
    return table


class DetailPane(VerticalScroll):
    """Every field of one dataset and its last jobs."""

    DEFAULT_CSS = "DetailPane { height: auto; } DetailPane > Static { width: 1fr; }"

    def compose(self) -> ComposeResult:
        yield Static(id="detail-body")

    def show(
        self,
        ds: Dataset | None,
        path: str,
        jobs: Sequence[Job],
        live: Job | None,
        tries: int,
        *,
        on_disk: str = "",
    ) -> None:
        """Render `ds` (None: nothing highlighted); `path` is where its file lives; `on_disk`:
        what the dashboard saw of its copy (`missing on disk: ...`: the store cannot know)."""
        body = self.query_one("#detail-body", Static)
        if ds is None:
            body.update("no dataset highlighted")
            return
        fields = Table.grid(padding=(0, 2))
        fields.add_column(style="bold", no_wrap=True)
        fields.add_column(overflow="fold")
        status = Text(ds.status.label, style=COLOUR[ds.status])
        if ds.outdated:
            why = ds.outdated_reason or "the catalogue changed"
            status.append(f" (outdated: {why})", style="yellow")
        if ds.downloaded and not ds.confirmed:  # nothing proved the copy whole (issue 12)
            status.append(f" (unconfirmed: {ds.unconfirmed_reason})", style="yellow")
        if on_disk:
            status.append(f" ({on_disk})", style="yellow")
        if not ds.in_catalog:
            status.append(" (no longer in the catalogue)", style="yellow")
        if ds.moved_upstream:
            status.append(
                f" (upstream moved to commit {ds.upstream_commit}: update fetches it)",
                style="yellow",
            )
        rows: list[tuple[str, Text]] = [
            ("name", Text(ds.name)),
            ("description", _value(ds.description)),
            ("status", status),
            ("progress", Text(f"{shown_progress(ds, live):.1f}%")),
            ("URL", _value(source_text(ds))),  # or how many files, from where
            ("local path", Text(path)),
            ("expected size", _value(ds.expected_size)),
            ("size", Text(humanize.size(ds.size) if ds.size is not None else "-")),
            ("expected SHA-256", _value(ds.expected_sha256)),
            ("SHA-256", _value(ds.checksum)),
            ("downloaded at", Text(humanize.when(ds.downloaded_at_ms))),
            ("served by", _value(ds.served_by)),  # origin, a mirror, or the team cache
            ("job id", _value(ds.download_job_id)),
            ("error", Text(error_text(ds.error or "-"), style="red" if ds.error else "")),
        ]
        if ds.source_commit:  # a Hub source: the commit on disk, and its files
            rows.insert(5, ("commit", Text(ds.source_commit)))
        if ds.manifest is not None:  # several files (a `files` list, a Hub folder)
            rows.insert(6, ("files", Text(str(len(ds.manifest)))))
        elif ds.file_count is not None:  # an unpacked archive
            unpacked = humanize.size(ds.unpacked_size) if ds.unpacked_size is not None else "-"
            rows.insert(6, ("unpacked", Text(f"{ds.file_count} files, {unpacked}")))
        for label, value in rows:
            fields.add_row(label, value)
        recent = list(reversed(jobs[-DETAIL_JOBS:]))
        title = Text(f"last jobs ({len(recent)} of {len(jobs)})", style="bold underline")
        body.update(Group(fields, Text(), title, job_table(recent, tries)))
