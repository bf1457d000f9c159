"""The job log widget on its own at 10,000 jobs: only the lines on screen are built, each
line says what the job did, new jobs show, escape asks the app to close it."""

from __future__ import annotations

import pytest
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult

from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.widgets.joblog import JobLog, JobLogPane

pytestmark = pytest.mark.anyio
JOBS = 10_000
SIZE = (120, 30)
FAILURE = "HTTP 503 Service Unavailable (after 4 attempts)"


def failed(i: int) -> Job:
    job = Job(JobType.DOWNLOAD, f"ds-{i:05d}", {}, id=f"job-{i}", status=JobStatus.FAILED)
    job.attempts, job.error, job.created_ms = 4, FAILURE, 1_000 + i
    return job


class LogApp(App[None]):
    """Just the log, open, over a list of jobs (newest first)."""

    def __init__(self, jobs: list[Job]) -> None:
        super().__init__()
        self.jobs = jobs
        self.pane = JobLogPane(max_attempts=4)
        self.closes = 0

    def compose(self) -> ComposeResult:
        yield self.pane

    def on_mount(self) -> None:
        self.pane.display = True
        self.pane.show(self.jobs, name_width=8)
        self.pane.log_view.focus()

    @on(JobLogPane.Closed)
    def _log_closed(self) -> None:
        self.closes += 1


async def test_only_the_lines_on_screen_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    line_text = JobLog.line_text

    def counted(self: JobLog, index: int) -> Text:
        built.append(index)
        return line_text(self, index)

    monkeypatch.setattr(JobLog, "line_text", counted)
    app = LogApp([failed(i) for i in reversed(range(JOBS))])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.pane.log_view
        rows = log.size.height - 1  # under the header line
        assert sorted(set(built)) == list(range(-1, rows))
        built.clear()
        log.scroll_end(animate=False)
        while JOBS - 1 not in built:  # the last line drawn: the oldest job
            await pilot.pause()
        assert sorted(set(built)) == [-1, *range(JOBS - rows, JOBS)]


async def test_a_line_says_what_the_job_did_and_the_log_follows_new_jobs() -> None:
    jobs = [failed(i) for i in reversed(range(JOBS))]
    app = LogApp(jobs)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.pane.log_view
        header = log.line_text(-1).plain.split()
        assert header == ["type", "dataset", "status", "tries", "when", "last", "failure"]
        newest = log.line_text(0).plain
        assert newest.split()[:4] == ["download", "ds-09999", "failed", "4"]
        assert newest.endswith(FAILURE)  # the cause of its last failure, whole at 120 columns
        assert f"{JOBS} jobs" in str(app.pane.title_bar.render())
        running = Job(JobType.DOWNLOAD, "fresh", {}, status=JobStatus.RUNNING)
        app.pane.show([running, *jobs], name_width=8)
        await pilot.pause()
        assert log.line_text(0).plain.split()[:4] == ["download", "fresh", "running", "1"]
        assert f"{JOBS + 1} jobs" in str(app.pane.title_bar.render())
        await pilot.press("escape", "q", "l")
        assert app.closes == 3
