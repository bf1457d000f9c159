"""The summary line and the detail pane: plain views over data the app hands them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from dsm import humanize
from dsm.domain.jobs import Job
from dsm.domain.model import Dataset
from dsm.widgets.dataset_table import STATUS_STYLE, shown_progress

DETAIL_JOBS = 5


@dataclass(frozen=True)
class Totals:
    datasets: int
    downloaded: int
    failed: int
    bytes_on_disk: int
    active_jobs: int
    rate: float


class Summary(Static):
    """One line: datasets, downloaded, failed, bytes on disk, active jobs, total rate."""

    DEFAULT_CSS = "Summary { height: 1; padding: 0 1; background: $boost; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("loading…", id=id)
        self._shown: Totals | None = None

    def show(self, t: Totals) -> None:
        if t == self._shown:
            return
        self._shown = t
        line = Text()
        parts = (
            (f"{t.datasets} datasets", ""),
            (f"{t.downloaded} downloaded", "green"),
            (f"{t.failed} failed", "bold red" if t.failed else ""),
            (f"{humanize.size(t.bytes_on_disk)} on disk", ""),
            (f"{t.active_jobs} active jobs", "bold cyan" if t.active_jobs else ""),
            (humanize.rate(t.rate) if t.rate else "idle", ""),
        )
        for i, (text, style) in enumerate(parts):
            if i:
                line.append(" · ", style="dim")
            line.append(text, style=style)
        self.update(line)


def _value(v: object) -> Text:
    return Text("-" if v is None or v == "" else str(v))


def job_table(jobs: Sequence[Job], *, with_dataset: bool) -> Table:
    """Jobs as rows: type, (dataset,) status, attempts, when, error; user strings as Text."""
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
    table.add_column("type")
    if with_dataset:
        table.add_column("dataset", overflow="fold")
    table.add_column("status")
    table.add_column("tries", justify="right")
    table.add_column("when")
    table.add_column("error", overflow="fold", ratio=1)
    for job in jobs:
        cells = [Text(job.type.value)]
        if with_dataset:
            cells.append(Text(job.dataset))
        style = "green" if job.status.ok else ("cyan" if not job.status.finished else "red")
        cells += [
            Text(job.status.value, style=style),
            Text(str(job.attempts)),
            Text(humanize.when(job.finished_ms or job.started_ms or job.created_ms)),
            Text(job.error or "", style="red"),
        ]
        table.add_row(*cells)
    return table


class DetailPane(VerticalScroll):
    """Every field of one dataset and its last jobs."""

    DEFAULT_CSS = "DetailPane { height: auto; } DetailPane > Static { width: 1fr; }"

    def compose(self) -> ComposeResult:
        yield Static(id="detail-body")

    def show(self, ds: Dataset | None, path: str, jobs: Sequence[Job], live: Job | None) -> None:
        """Render `ds` (None: nothing highlighted); `path` is where its file lives."""
        body = self.query_one("#detail-body", Static)
        if ds is None:
            body.update("no dataset highlighted")
            return
        fields = Table.grid(padding=(0, 2))
        fields.add_column(style="bold", no_wrap=True)
        fields.add_column(overflow="fold")
        status = Text(ds.status.label, style=STATUS_STYLE[ds.status])
        if ds.outdated:
            status.append(" (outdated: the catalogue changed)", style="yellow")
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
            ("URL", _value(ds.original_url)),
            ("local path", Text(path)),
            ("expected size", _value(ds.expected_size)),
            ("size", _value(ds.size)),
            ("expected SHA-256", _value(ds.expected_sha256)),
            ("SHA-256", _value(ds.checksum)),
            ("downloaded at", Text(humanize.when(ds.downloaded_at_ms))),
            ("job id", _value(ds.download_job_id)),
            ("error", Text(ds.error or "-", style="red" if ds.error else "")),
        ]
        if ds.source_commit:  # a Hub source: the commit on disk, and its files
            rows.insert(5, ("commit", Text(ds.source_commit)))
        if ds.manifest is not None:
            rows.insert(6, ("files", Text(str(len(ds.manifest)))))
        for label, value in rows:
            fields.add_row(label, value)
        recent = list(reversed(jobs[-DETAIL_JOBS:]))
        title = Text(f"last jobs ({len(recent)} of {len(jobs)})", style="bold underline")
        body.update(Group(fields, Text(), title, job_table(recent, with_dataset=False)))
