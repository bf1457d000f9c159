"""What the dashboard shows of datasets and jobs, computed without any UI toolkit.

The dashboard's state (dsm.tui.state) and its widgets (dsm.widgets) both read these; keeping
them here lets the state be tested, and imported, without Textual.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from dsm.domain.jobs import PAUSED_MESSAGE, Job, JobStatus, JobType
from dsm.domain.model import Dataset, Status
from dsm.domain.redact import error_text, redact_url

RATE_HALF_LIFE = 2.0  # seconds: the smoothed rate follows a change of speed within ~5 s
RATE_WARMUP = 1.0  # seconds of samples before a rate (and so an ETA) is shown
ETA_MAX = 100 * 3600.0  # an ETA beyond this is noise from a near-stalled stream: not shown
ENDS_WINDOW = 30.0  # seconds of finished jobs an ETA by count of jobs is taken from ...
ENDS_MIN = 10  # ... and how many must have finished in it for one to be shown
SPARK = "▁▂▃▄▅▆▇█"
_HTTP_CODE = re.compile(r"\bHTTP (\d{3})\b")
_URL_TAIL = re.compile(r" (?:(?:from|for) https?://\S+|\(https?://[^)\s]*\))")
_HEX = re.compile(r"\b([0-9a-f]{8})[0-9a-f]{24,}\b")
_RETRY = re.compile(r"^attempt \d+ failed: (.*); retrying in [\d.]+ s$", re.DOTALL)


@dataclass(frozen=True)
class RowView:
    """Everything one row shows: the dataset, the job to show on it (None: none), the mark,
    the smoothed rate (None: not known yet) and the info text (a pending action, a retry, a
    pause, else the error)."""

    ds: Dataset
    job: Job | None
    marked: bool
    rate: float | None = None
    info: str = ""


def shown_progress(ds: Dataset, job: Job | None) -> float:
    """The live job's progress while it transfers, and while it waits to try again or to
    resume with bytes already on disk (its last progress: the partial file), else the
    stored one."""
    moving = job is not None and (job.status == JobStatus.RUNNING or job.bytes_done > 0)
    if job is not None and moving and not job.status.finished and job.bytes_total:
        return min(100.0, 100.0 * job.bytes_done / job.bytes_total)
    return 100.0 if ds.status == Status.DOWNLOADED else ds.download_progress


def source_text(ds: Dataset) -> str:
    """Where a dataset comes from, as the detail pane shows it: its URL (redacted), or for a
    dataset of several files how many and from which origins (each file's URL is in the
    manifest that `show --json` prints)."""
    if not ds.files:
        return redact_url(ds.original_url)
    origins = sorted({_origin(str(f.get("url", ""))) for f in ds.files})
    return f"{len(ds.files)} files from {', '.join(origins)}"


def _origin(url: str) -> str:
    """scheme://host[:port], without any user or password."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a broken port or IPv6 literal: shown as it is, redacted
        return redact_url(url)
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def is_paused(job: Job | None) -> bool:
    return job is not None and job.status == JobStatus.WAITING and job.error == PAUSED_MESSAGE


def short_cause(error: str | None) -> str:
    """An error as a row shows it: one line, without the URL (the detail pane has it) and
    with hashes cut to 8 digits."""
    if not error:
        return ""
    return _HEX.sub(r"\1…", _URL_TAIL.sub("", error_text(error)))  # a server's text in part


def job_notice(job: Job) -> tuple[str, bool] | None:
    """The line the dashboard notifies a job's end with, and whether it is an error: a
    failure with its cause, a skip with why (a verify's was called `already downloaded`), a
    verify that passed (it ended without a word)."""
    if job.status in (JobStatus.FAILED, JobStatus.TIMEOUT):
        return f"{job.dataset} failed: {short_cause(job.error)}", True
    if job.status == JobStatus.SKIPPED:
        why = "already downloaded (f fetches again)" if job.type == JobType.DOWNLOAD else job.error
        return f"{job.dataset}: {why or 'skipped'}", False
    if job.status == JobStatus.COMPLETED and job.type == JobType.VERIFY:
        return f"{job.dataset}: verified, the copy on disk is as recorded", False
    return None


def retry_cause(error: str | None) -> str:
    """Why a retrying job failed last: the HTTP status code, else the short cause."""
    text = error or ""
    found = _RETRY.match(text)
    cause = found.group(1) if found else text
    code = _HTTP_CODE.search(cause)
    return code.group(1) if code else short_cause(cause)


def retry_text(job: Job, max_attempts: int, now_ms: int | None) -> str:
    """'attempt 2/5 · 503 · next in 4 s' for a job waiting to try again (no countdown
    without `now_ms`)."""
    parts = [f"attempt {job.attempts + 1}/{max_attempts}", retry_cause(job.error)]
    if job.retry_at_ms is not None and now_ms is not None:
        parts.append(f"next in {max(0, math.ceil((job.retry_at_ms - now_ms) / 1000))} s")
    return " · ".join(p for p in parts if p)


def pending_text(job: Job | None, pending: str | None) -> str:
    """What a row is about to do that has not shown on its status yet."""
    if pending:
        return f"{pending} pending"
    if job is not None and job.type == JobType.DELETE and job.status == JobStatus.WAITING:
        return "delete pending"
    return ""


class RateMeter:
    """A job's transfer rate, smoothed (an exponential moving average with RATE_HALF_LIFE),
    from the bytes it moved in this session only: a resumed job starts from its partial file,
    and those bytes were never moved at any rate here."""

    def __init__(self, bytes_done: int, now: float) -> None:
        self._bytes, self._at, self._start = bytes_done, now, now
        self.rate = 0.0

    def sample(self, bytes_done: int, now: float) -> float:
        elapsed = now - self._at
        if elapsed <= 0:
            return self.rate
        instant = max(0, bytes_done - self._bytes) / elapsed
        weight = 1 - 0.5 ** (elapsed / RATE_HALF_LIFE)
        self.rate = (
            instant if self._at == self._start else self.rate + weight * (instant - self.rate)
        )
        self._bytes, self._at = bytes_done, now
        return self.rate

    @property
    def last_bytes(self) -> int:
        return self._bytes

    def known(self, now: float) -> float | None:
        """The rate once it has RATE_WARMUP seconds of samples, else None."""
        return self.rate if now - self._start >= RATE_WARMUP else None


class Throughput:
    """All jobs together: the bytes they moved, smoothed as one job's rate, and the jobs that
    finished a second. Summing the jobs' own meters misses small files: they finish before
    their meter has a rate, and 10,000 of them showed 0 B/s while 70 a second came in."""

    def __init__(self) -> None:
        self._meter: RateMeter | None = None  # from when jobs became active
        self._moved = 0
        self._ends: deque[float] = deque()

    def active(self, busy: bool, now: float) -> None:
        """Whether jobs are active now: the rate is measured from when they became so (from
        the dashboard's start it rose over seconds to the true one), and 0 in between."""
        if not busy:
            self._meter = None
        elif self._meter is None:
            self._meter = RateMeter(self._moved, now)

    def moved(self, n: int) -> None:
        self._moved += max(0, n)

    def ended(self, job: Job, now: float) -> None:
        """A job finished. A canceled one is not counted: `c` on 5,000 queued jobs is not a
        rate the rest will finish at (the ETA read 1 s while nothing completed)."""
        if job.status != JobStatus.CANCELED:
            self._ends.append(now)

    def rate(self, now: float) -> float:
        if self._meter is None:
            return 0.0
        self._meter.sample(self._moved, now)
        return self._meter.known(now) or 0.0

    def jobs_rate(self, now: float) -> float | None:
        """Jobs finished a second since the first one in the last ENDS_WINDOW; None with
        fewer than ENDS_MIN. Those stamped with the first one's time are not counted: ends
        seen in batches (another process's, a store read a second) took the time before."""
        while self._ends and now - self._ends[0] > ENDS_WINDOW:
            self._ends.popleft()
        if not self._ends or now <= self._ends[0]:
            return None
        first = self._ends[0]
        after = sum(1 for stamp in self._ends if stamp > first)
        return after / (now - first) if after >= ENDS_MIN else None


def eta(remaining: int | None, rate: float | None) -> float | None:
    """Seconds left at the smoothed rate; None when unknown or too far to mean anything."""
    if remaining is None or not rate or rate <= 0:
        return None
    seconds = max(0, remaining) / rate
    return seconds if seconds <= ETA_MAX else None


def sparkline(values: Sequence[float], width: int) -> str:
    """`values` (oldest first) as `width` bar glyphs, each the mean of its share; scaled to the
    largest value so a steady stream reads as a flat line."""
    if not values or width <= 0:
        return ""
    per = max(1, math.ceil(len(values) / width))
    means = [sum(chunk) / len(chunk) for chunk in _chunks(values, per)]
    top = max(means)
    if top <= 0:
        return SPARK[0] * len(means)
    return "".join(SPARK[min(len(SPARK) - 1, int(m / top * (len(SPARK) - 1) + 0.5))] for m in means)


def _chunks(values: Sequence[float], per: int) -> list[Sequence[float]]:
    return [values[i : i + per] for i in range(0, len(values), per)]


@dataclass(frozen=True)
class Totals:
    """The summary line's numbers."""

    datasets: int
    downloaded: int
    failed: int
    bytes_on_disk: int
    missing: int = 0  # downloaded rows whose copy was removed by hand (not in `downloaded`)
    downloading: int = 0
    queued: int = 0
    retrying: int = 0
    paused: int = 0
    bytes_done: int = 0  # of the active jobs
    bytes_total: int = 0  # of the active jobs whose size is known
    sizes_unknown: int = 0  # active jobs whose size is not known
    rate: float = 0.0  # smoothed, all jobs
    eta_s: float | None = None
    shown: int = 0
    marked: int = 0
    history: tuple[float, ...] = ()  # total rate once a second, the last minute

    @property
    def active(self) -> int:
        return self.downloading + self.queued + self.retrying
