"""`dsm --run-job`: run jobs to the end without the dashboard, reporting on stderr or as JSON."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import Counter
from typing import Any, TextIO

import anyio

from dsm import humanize
from dsm.config import Settings
from dsm.domain.events import EventKind, JobEvent
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.redact import error_text
from dsm.domain.terminal import json_text, printable, writes_unicode
from dsm.engine.engine import Engine
from dsm.engine.ledger import Asked
from dsm.repository import Repository

PLAIN_INTERVAL = 5.0  # seconds between progress lines when stderr is not a terminal
JSON_PROGRESS_INTERVAL = 1.0
REDRAW_INTERVAL = 0.1
LINES_INTERVAL = 0.1  # event lines are written at most this late, many in one write
# A closed terminal (SIGHUP) and Ctrl-\ (SIGQUIT) stop the jobs as SIGTERM does, each with
# the shell's code for it (128 + the signal's number).
SIGNAL_EXIT = {signal.SIGHUP: 129, signal.SIGINT: 130, signal.SIGQUIT: 131, signal.SIGTERM: 143}
FETCHES = (JobType.DOWNLOAD, JobType.UPDATE)
NAMES_SHOWN = 5  # of the jobs that did not end well, in the closing tally


def describe(job: Job, eta: float | None = None) -> str:
    """One human line for a job: what, how far, how fast, or how it ended."""
    head = f"{job.type.value} {job.dataset}: {job.status.value}"
    if job.status.finished:
        return head + (f": {error_text(job.error)}" if job.error else "")
    if job.bytes_total:
        head += f" {job.progress:5.1f}% of {humanize.size(job.bytes_total)}"
    elif job.bytes_done:
        head += f" {humanize.size(job.bytes_done)}"
    if job.rate:
        head += f" at {humanize.rate(job.rate)}"
        head += f", eta {humanize.duration(eta)}" if eta is not None else ""
    if job.status.value == "retrying" and job.error:
        head += f" ({error_text(job.error)})"
    return head


class Reporter:
    """Listens to engine events; must stay cheap (it runs on the engine's event loop)."""

    def __init__(self, err: TextIO, out: TextIO, as_json: bool, batched: bool = False) -> None:
        """`batched`: event lines wait for `flush` (`flush_every`), many in one write: a
        write per line cost the event loop a system call per job state change (issue 17)."""
        self.err, self.out, self.as_json = err, out, as_json
        self.live = err.isatty() and not as_json
        self.ascii = not writes_unicode(out)  # JSON lines: escape what `out` cannot take
        self.lines: dict[str, str] = {}
        self.drawn = 0
        self.last: dict[str, float] = {}
        self.muted = False  # the report stream failed (its reader went away, a full disk)
        self.batched = batched
        self._pending: list[str] = []

    def __call__(self, event: JobEvent) -> None:
        if self.muted:
            return
        job = event.job
        now = time.monotonic()
        if event.kind == EventKind.PROGRESS and event.dataset is None:
            interval = (
                JSON_PROGRESS_INTERVAL
                if self.as_json
                else (REDRAW_INTERVAL if self.live else PLAIN_INTERVAL)
            )
            if now - self.last.get(job.id, 0.0) < interval:
                return
        self.last[job.id] = now
        if self.as_json:
            self._json(event)
        elif self.live:
            self.lines[job.id] = describe(job, event.eta_s)
            self._redraw()
        elif event.kind != EventKind.PROGRESS or event.dataset is None:
            self._line(describe(job, event.eta_s))

    def _line(self, line: str) -> None:
        self._pending.append(line + "\n")
        if not self.batched:
            self.flush()

    def flush(self) -> None:
        """Write the lines waiting (to stdout with --json, else to stderr)."""
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        if not _write(self.out if self.as_json else self.err, text):
            self.muted = True

    def say(self, line: str) -> None:
        """A line for the user on stderr, after the report (a verdict)."""
        _write(self.err, printable(line) + "\n")

    async def flush_every(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            self.flush()

    def _json(self, event: JobEvent) -> None:
        job = event.job
        record: dict[str, Any] = {
            "event": event.kind.value,
            "job_id": job.id,
            "type": job.type.value,
            "dataset": job.dataset,
            "status": job.status.value,
            "attempts": job.attempts,
            "bytes_done": job.bytes_done,
            "bytes_total": job.bytes_total,
            "progress": round(job.progress, 2),
            "rate": round(job.rate, 1),
            "eta_s": event.eta_s,
            "error": job.error,
        }
        self._line(json_text(record, ascii=self.ascii))

    def _redraw(self) -> None:
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        body = "".join(f"\x1b[2K{line}\n" for line in self.lines.values())
        if not _write(self.err, up + body):
            self.muted = True
        self.drawn = len(self.lines)


def _write(stream: TextIO, text: str) -> bool:
    """Write and flush; False when the stream failed (`dsm --run-job ... | head`, a closed
    terminal, a full disk): the jobs still run, the stream then points at devnull, as the
    Python docs advise, so the flush at exit is quiet."""
    try:
        stream.write(text)
        stream.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):  # not a file, or already closed
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        return False
    return True


async def run_jobs(
    settings: Settings,
    repo: Repository,
    job_type: JobType,
    params: list[dict[str, Any]],
    as_json: bool,
) -> int:
    reporter = Reporter(sys.stderr, sys.stdout, as_json, batched=True)
    started = time.monotonic()
    try:
        exit_code, ended, lost = await _run_reported(settings, repo, job_type, params, reporter)
    finally:
        reporter.flush()  # before the lines below, and on the way out of an error
    unproven = frozenset() if exit_code else _unconfirmed(repo, ended, reporter)
    if len(ended) > 1 and not as_json:  # JSON: the events say it, stderr stays quiet
        reporter.say(tally(ended, unproven, time.monotonic() - started))
    if exit_code:
        return exit_code
    return 0 if all(j.status.ok for j in ended) and not unproven and not lost else 1


async def _run_reported(
    settings: Settings,
    repo: Repository,
    job_type: JobType,
    params: list[dict[str, Any]],
    reporter: Reporter,
) -> tuple[int, list[Job], bool]:
    """The jobs run to the end: the exit code of a signal that stopped them (else 0), how
    each job asked for ended, then any other this engine ran, and whether store changes
    were lost (a write failed: said once by the ledger; the run must not pass)."""
    exit_code = 0
    jobs: list[Job] = []
    finished: dict[str, Job] = {}

    def record(event: JobEvent) -> None:
        if event.kind == EventKind.FINISHED:
            finished[event.job.id] = event.job

    # Orphaned jobs of other datasets (a dashboard that quit mid-download, a crash) are left
    # for a start that asks for them: a script gets the jobs it asked for and no others.
    names = frozenset(str(p["dataset"]) for p in params)
    engine = Engine(settings, repo, [reporter, record], adopt_only=Asked(names, job_type))
    async with engine.running(), anyio.create_task_group() as tg:

        async def on_signals() -> None:
            nonlocal exit_code
            with anyio.open_signal_receiver(*SIGNAL_EXIT) as signals:
                async for signum in signals:
                    exit_code = SIGNAL_EXIT[signal.Signals(signum)]
                    await engine.cancel_all()

        tg.start_soon(on_signals)
        tg.start_soon(reporter.flush_every, LINES_INTERVAL)
        jobs = await engine.submit_many(job_type, params)
        if exit_code:  # a signal came while the jobs were being recorded
            await engine.cancel_all()
        await engine.wait_idle()
        tg.cancel_scope.cancel()
    asked = {j.id for j in jobs}
    ended = [finished.get(j.id, j) for j in jobs] + [
        j for j in finished.values() if j.id not in asked
    ]
    return exit_code, ended, engine.ledger.lost is not None


def tally(ended: list[Job], unconfirmed: frozenset[str], seconds: float) -> str:
    """The closing line of a run of many jobs, whose lines (10,000 of them) scroll away: how
    many ended how, and which did not end well (a download nothing proved whole included)."""

    def outcome(job: Job) -> str:
        if job.status == JobStatus.COMPLETED and job.dataset in unconfirmed:
            return "not confirmed"
        return job.status.value

    counts = Counter(outcome(job) for job in ended)
    took = f"{seconds:.1f}s" if seconds < 60 else humanize.duration(seconds)
    line = f"dsm: {len(ended)} jobs in {took}: " + ", ".join(
        f"{n} {label}" for label, n in counts.most_common()
    )
    bad = sorted(j.dataset for j in ended if not j.status.ok or j.dataset in unconfirmed)
    if not bad:
        return line
    more = f" and {len(bad) - NAMES_SHOWN} more" if len(bad) > NAMES_SHOWN else ""
    return f"{line}; not done: {', '.join(bad[:NAMES_SHOWN])}{more}"


def _unconfirmed(repo: Repository, ended: list[Job], reporter: Reporter) -> frozenset[str]:
    """Say which downloads nothing proved whole (issue 12.1): the copy is kept, flagged
    `confirmed: false`, and the run does not end as a success. Their names."""
    fetched = {j.dataset for j in ended if j.type in FETCHES and j.status == JobStatus.COMPLETED}
    found = []
    for name in sorted(fetched):
        ds = repo.dataset(name)
        if ds.downloaded and not ds.confirmed:
            reporter.say(f"dsm: {name}: downloaded, not confirmed: {ds.unconfirmed_reason}")
            found.append(name)
    return frozenset(found)
