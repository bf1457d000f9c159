"""The dashboard's state and display rules without an app: rates, ETA, retry and pending
texts, the summary line, sizes in the largest unit under 1000, re-sorting, the progress of a
retrying job, the job log's order."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsm import humanize
from dsm.domain.display import (
    ENDS_MIN,
    ETA_MAX,
    RateMeter,
    Totals,
    eta,
    job_notice,
    retry_text,
    short_cause,
    shown_progress,
    sparkline,
)
from dsm.domain.jobs import PAUSED_MESSAGE, Job, JobStatus, JobType
from dsm.domain.model import Dataset, Status
from dsm.engine.liveness import CHANGED, MISSING
from dsm.tui import feed
from dsm.tui.feed import FREEZE_ROWS, HeapFreezer
from dsm.tui.state import DashboardState
from dsm.widgets.dataset_table import COLOUR
from dsm.widgets.panels import summary_line


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job(name: str = "alpha", status: JobStatus = JobStatus.RUNNING, **kw: object) -> Job:
    out = Job(JobType.DOWNLOAD, name, {}, id=f"j-{name}", status=status)
    for key, value in kw.items():
        setattr(out, key, value)
    return out


def test_state_module_never_imports_textual() -> None:
    code = (
        "import sys, dsm.tui.state, dsm.domain.display\n"
        "assert 'textual' not in sys.modules, 'textual imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 KiB"),  # 1000 B is not under 1000
        (int(1006.6 * 1024), "1.0 MiB"),
        (int(999.7 * 1024), "1.0 MiB"),  # would print as "1000 KiB"
        (312 * 1024**2, "312 MiB"),
        (int(4.3 * 1024**2), "4.3 MiB"),
        (1024**3, "1.0 GiB"),
    ],
)
def test_sizes_use_the_largest_unit_under_1000(n: int, shown: str) -> None:
    assert humanize.size(n) == shown


def test_rate_is_smoothed_and_counts_only_this_sessions_bytes() -> None:
    resumed_at = 900 * 1024**2  # a resume: 900 MiB were on disk before this session
    meter = RateMeter(resumed_at, now=0.0)
    done, t = resumed_at, 0.0
    for i in range(40):  # a steady 1 MiB/s delivered in uneven bursts, 4 samples a second
        t += 0.25
        done += (2 if i % 2 else 0) * 1024**2 // 8
        meter.sample(done, t)
    assert meter.known(t) == pytest.approx(1024**2 / 2, rel=0.25)
    assert RateMeter(0, now=0.0).known(0.5) is None  # not yet a second of samples
    assert eta(100 * 1024**2, meter.known(t)) == pytest.approx(200, rel=0.25)


def test_eta_is_blank_when_unknown_and_never_absurd() -> None:
    assert eta(None, 1000.0) is None
    assert eta(1000, None) is None and eta(1000, 0.0) is None
    assert eta(10**15, 1.0) is None  # 31 million years: not shown
    assert eta(int(ETA_MAX) - 1, 1.0) is not None


def test_retry_and_failure_texts() -> None:
    retrying = job(status=JobStatus.RETRYING, attempts=1, retry_at_ms=10_000)
    retrying.error = (
        "attempt 1 failed: HTTP 503 Service Unavailable from http://h/x; retrying in 4.0 s"
    )
    assert retry_text(retrying, 5, now_ms=6_000) == "attempt 2/5 · 503 · next in 4 s"
    assert retry_text(retrying, 5, now_ms=None) == "attempt 2/5 · 503"
    retrying.error = "attempt 1 failed: connection refused; retrying in 1.0 s"
    assert retry_text(retrying, 5, now_ms=9_500) == "attempt 2/5 · connection refused · next in 1 s"
    sha = "ab" * 32
    assert short_cause(f"checksum mismatch: expected sha256 {sha}, got {sha}") == (
        "checksum mismatch: expected sha256 abababab…, got abababab…"
    )
    assert short_cause("HTTP 404 Not Found from http://127.0.0.1:9/x (after 4 attempts)") == (
        "HTTP 404 Not Found (after 4 attempts)"
    )
    assert short_cause("size mismatch: expected 9 bytes, server announces 6 (http://h:1/a)") == (
        "size mismatch: expected 9 bytes, server announces 6"
    )


def test_rows_say_pending_cancel_delete_pause_and_retry_at_once() -> None:
    state = DashboardState(own_engine="me", max_attempts=4, wall_ms=lambda: 1_000)
    state.apply_snapshot([Dataset("a"), Dataset("b"), Dataset("c"), Dataset("d")], [])
    state.apply_job(job("a", JobStatus.WAITING))
    state.ask(["a", "b"], "cancel")  # b has no job: nothing pending
    assert state.row("a").info == "cancel pending" and state.row("b").info == ""
    state.apply_job(job("a", JobStatus.CANCELED))
    assert state.row("a").info == "" and "a" not in state.pending
    state.apply_job(job("b", JobStatus.RUNNING), Dataset("b", status=Status.DOWNLOADING))
    delete = Job(JobType.DELETE, "b", {}, id="del-b")
    state.apply_job(delete)
    assert state.row("b").job is not None and state.row("b").job.type == JobType.DOWNLOAD  # type: ignore[union-attr]
    assert state.row("b").info == "delete pending"
    state.apply_job(job("c", JobStatus.WAITING, error=PAUSED_MESSAGE))
    assert state.row("c").info == "paused: p resumes"
    retry = job("d", JobStatus.RETRYING, attempts=1, retry_at_ms=5_000)
    retry.error = "attempt 1 failed: HTTP 503 Service Unavailable; retrying in 4.0 s"
    state.apply_job(retry)
    assert state.row("d").info == "attempt 2/4 · 503 · next in 4 s"
    assert set(state.ticking()) == {"b", "d"}  # running and retrying rows tick; queued do not


@pytest.mark.parametrize("ends", ["canceled", "pruned"])
def test_a_cancel_asked_of_another_process_s_job_is_no_longer_pending_once_it_ends(
    ends: str,
) -> None:
    """`c` on a row another process downloads: its end is seen in a store read, not in our
    events (the row said `canceled ... cancel pending` for as long as the dashboard ran)."""
    state = DashboardState(own_engine="me", max_attempts=4)
    rows = [Dataset("a", status=Status.DOWNLOADING)]
    state.apply_snapshot(rows, [job("a", owner="other")])
    state.ask(["a"], "cancel")
    assert state.row("a").info == "cancel pending"
    rows = [Dataset("a", status=Status.CANCELED, updated_at_ms=1)]
    after = [job("a", JobStatus.CANCELED, owner="other")] if ends == "canceled" else []
    assert state.apply_snapshot(rows, after).names == {"a"}
    assert state.row("a").info == "" and "a" not in state.pending


def test_a_sorted_field_that_changes_asks_for_a_resort() -> None:
    state = DashboardState(own_engine="me")
    state.apply_snapshot([Dataset("a"), Dataset("b")], [])
    state.sort = "status"
    assert state.visible() == ["a", "b"]
    assert not state.needs_resort(["a"])
    state.apply_job(job("a", JobStatus.COMPLETED), Dataset("a", status=Status.DOWNLOADED))
    assert state.needs_resort(["a"])
    assert state.visible() == ["b", "a"]
    state.reverse = True
    assert state.visible() == ["a", "b"]


def test_totals_count_jobs_bytes_rate_and_view() -> None:
    clock = Clock()
    state = DashboardState(own_engine="me", clock=clock)
    state.apply_snapshot([Dataset(n, expected_size=1000) for n in "abcd"], [])
    state.apply_job(job("a", bytes_done=0, bytes_total=1000), Dataset("a", expected_size=1000))
    state.apply_job(job("b", JobStatus.WAITING))
    state.apply_job(job("c", JobStatus.WAITING, error=PAUSED_MESSAGE))
    clock.now += 2
    state.apply_job(job("a", bytes_done=400, bytes_total=1000))
    state.marked = {"a", "b", "c"}
    t = state.totals(shown=1)
    assert (t.downloading, t.queued, t.paused, t.retrying) == (1, 1, 1, 0)
    assert (t.bytes_done, t.bytes_total, t.rate) == (400, 3000, 200.0)
    assert t.eta_s == pytest.approx(13, abs=0.1)
    line = summary_line(t, 200, {str(k): v for k, v in COLOUR.items()}).plain
    assert line == (
        "1 downloading · 1 queued · 1 paused | 400 B of 2.9 KiB · 200 B/s · ETA 13s"
        " | 1 of 4 shown · 3 marked"
    )


def queued(count: int) -> tuple[DashboardState, Clock, list[str]]:
    """A dashboard with `count` datasets, each with a job of ours waiting."""
    clock = Clock()
    state = DashboardState(own_engine="me", clock=clock)
    names = [f"d{i:03d}" for i in range(count)]
    state.apply_snapshot([Dataset(n) for n in names], [])
    for n in names:
        state.apply_job(job(n, JobStatus.WAITING))
    return state, clock, names


def test_small_files_that_finish_between_samples_still_make_the_rate_and_eta() -> None:
    """Jobs of 1 KiB each run and finish within one progress interval: no job's own meter
    ever has a rate, yet 50 a second come in. The summary says 50 KiB/s, and, sizes not
    being known, an ETA from the rate at which jobs finish; not "1.0 KiB of 1.0 KiB"."""
    state, clock, names = queued(400)
    for second in range(4):
        for n in names[second * 50 : (second + 1) * 50]:
            state.apply_job(job(n, JobStatus.RUNNING, bytes_done=0), Dataset(n))
            clock.now += 0.01
            state.apply_job(job(n, JobStatus.COMPLETED, bytes_done=1024, bytes_total=1024))
        clock.now += 0.5
        state.tick()
    state.apply_job(job("d200", JobStatus.RUNNING, bytes_done=0, bytes_total=1024))
    t = state.totals(shown=400)
    assert (t.downloading, t.queued, t.sizes_unknown) == (1, 199, 199)
    assert t.rate == pytest.approx(50 * 1024, rel=0.05)
    assert t.eta_s == pytest.approx(200 / 50, rel=0.1)  # 200 jobs left, 50 finish a second
    line = summary_line(t, 200, {str(k): v for k, v in COLOUR.items()}).plain
    assert line.startswith("1 downloading · 199 queued | 50.0 KiB/s · ETA 4s")
    assert " of " not in line.split("|")[1]


def test_the_summary_rate_is_measured_from_when_jobs_became_active() -> None:
    """A dashboard open for five minutes before `a`: the rate is the true one within two
    seconds, not a smoothed climb from the idle minutes' zero."""
    clock = Clock()
    state = DashboardState(own_engine="me", clock=clock)
    names = [f"d{i:03d}" for i in range(300)]
    state.apply_snapshot([Dataset(n) for n in names], [])
    for _ in range(300):
        clock.now += 1
        state.tick()
        assert state.totals(shown=300).rate == 0
    for n in names[:100]:  # 50 a second for two seconds, 1 KiB each
        state.apply_job(job(n, JobStatus.RUNNING, bytes_done=0), Dataset(n))
        clock.now += 0.01
        state.apply_job(job(n, JobStatus.COMPLETED, bytes_done=1024))
        clock.now += 0.01
    state.apply_job(job("d100", JobStatus.RUNNING, bytes_done=0), Dataset("d100"))
    assert state.totals(shown=300).rate == pytest.approx(50 * 1024, rel=0.05)


def test_another_process_s_small_files_make_the_rate_and_eta_too() -> None:
    """Another process's jobs are seen only in store reads, once a second: a small file is
    waiting in one read and completed in the next, never seen moving."""
    clock = Clock()
    state = DashboardState(own_engine="me", clock=clock)
    names = [f"d{i:03d}" for i in range(120)]
    rows = [Dataset(n) for n in names]
    theirs = {n: job(n, JobStatus.WAITING, owner="other") for n in names}
    state.apply_snapshot(rows, list(theirs.values()))
    for second in range(3):
        clock.now += 1
        for n in names[second * 30 : (second + 1) * 30]:
            theirs[n] = job(n, JobStatus.COMPLETED, owner="other", bytes_done=2048)
        state.apply_snapshot(rows, list(theirs.values()))
        state.tick()
    t = state.totals(shown=120)
    assert (t.queued, t.sizes_unknown) == (30, 30)
    assert t.rate == pytest.approx(30 * 2048, rel=0.05)
    assert t.eta_s == pytest.approx(30 / (60 / 2), rel=0.05)  # 60 seen ending over 2 s


def test_a_paused_job_of_unknown_size_leaves_x_of_y_and_the_eta() -> None:
    """Only an active job's unknown size makes "x of y" read as all of them."""
    clock = Clock()
    state = DashboardState(own_engine="me", clock=clock)
    state.apply_snapshot([Dataset("big", expected_size=10_000), Dataset("odd")], [])
    state.apply_job(job("odd", JobStatus.WAITING, error=PAUSED_MESSAGE))
    state.apply_job(job("big", bytes_done=0, bytes_total=10_000), Dataset("big"))
    clock.now += 2
    state.apply_job(job("big", bytes_done=2000, bytes_total=10_000))
    t = state.totals(shown=2)
    assert (t.paused, t.sizes_unknown) == (1, 0)
    assert t.eta_s == pytest.approx(8)  # 8,000 bytes left at 1,000 a second
    line = summary_line(t, 200, {str(k): v for k, v in COLOUR.items()}).plain
    assert "2.0 KiB of 9.8 KiB" in line


def finish_one_a_tenth(state: DashboardState, clock: Clock, names: list[str]) -> None:
    """Our engine runs each of `names` (1000 bytes) and it ends 0.1 s after the last."""
    for n in names:
        state.apply_job(job(n, JobStatus.RUNNING, bytes_done=0), Dataset(n))
        clock.now += 0.1
        state.apply_job(job(n, JobStatus.COMPLETED, bytes_done=1000))


def test_an_eta_by_count_needs_ends_min_jobs_finished_after_the_first() -> None:
    clock = Clock()
    state = DashboardState(own_engine="me", clock=clock)
    names = [f"d{i:02d}" for i in range(ENDS_MIN + 5)]
    state.apply_snapshot([Dataset(n) for n in names], [])
    for n in names:
        state.apply_job(job(n, JobStatus.WAITING))
    finish_one_a_tenth(state, clock, names[:ENDS_MIN])  # the first and ENDS_MIN - 1 after it
    assert state.totals(shown=len(names)).eta_s is None
    finish_one_a_tenth(state, clock, names[ENDS_MIN : ENDS_MIN + 1])
    t = state.totals(shown=len(names))
    assert t.queued == 4 and t.eta_s == pytest.approx(4 / 10)  # ten a second


def test_canceled_jobs_do_not_make_the_rate_jobs_finish_at() -> None:
    """`c` on many queued jobs ends them all at once: the rest do not finish that fast."""
    state, clock, names = queued(200)
    finish_one_a_tenth(state, clock, names[:20])  # 19 after the first in 1.9 s
    for n in names[100:]:
        state.apply_job(job(n, JobStatus.CANCELED))
    t = state.totals(shown=200)
    assert t.queued == 80 and t.eta_s == pytest.approx(80 / (19 / 1.9))


def test_jobs_adopted_from_a_dead_process_count_once() -> None:
    """The first store read has a dead process's waiting jobs; our engine adopts them and
    small ones end before the next read, which has them completed and ours. Counted from our
    events and again as another process's ends, they doubled the rate and halved the ETA."""
    clock = Clock()
    state = DashboardState(own_engine="me", clock=clock)
    names = [f"d{i:02d}" for i in range(40)]
    rows = [Dataset(n) for n in names]
    state.apply_snapshot(rows, [job(n, JobStatus.WAITING, owner="dead") for n in names])
    for n in names:  # queued again by our engine
        state.apply_job(job(n, JobStatus.WAITING, owner="me"))
    finish_one_a_tenth(state, clock, names[:20])  # 20,000 bytes in 2 s
    state.tick()
    done = [job(n, JobStatus.COMPLETED, owner="me", bytes_done=1000) for n in names[:20]]
    state.apply_snapshot(rows, done + [job(n, JobStatus.WAITING, owner="me") for n in names[20:]])
    clock.now += 0.5
    state.tick()
    t = state.totals(shown=40)
    assert t.queued == 20 and t.eta_s == pytest.approx(20 / (19 / 2.4))
    assert t.rate < 10_000  # counted twice, the 20,000 bytes made ~12,000/s


def test_summary_drops_low_priority_parts_to_fit() -> None:
    t = Totals(
        datasets=16, downloaded=3, failed=2, bytes_on_disk=0, downloading=4, queued=12,
        retrying=1, bytes_done=312 * 1024**2, bytes_total=1024**3, rate=4.3 * 1024**2,
        eta_s=160, shown=16, history=(1.0, 2.0, 4.0),
    )  # fmt: skip
    palette = {str(k): v for k, v in COLOUR.items()}
    wide = summary_line(t, 200, palette).plain
    assert wide.startswith(
        "4 downloading · 12 queued · 1 retrying · 2 failed | 312 MiB of 1.0 GiB · 4.3 MiB/s"
        " · ETA 2m40s · "
    )
    narrow = summary_line(t, 78, palette).plain
    assert narrow == "4 downloading · 12 queued · 1 retrying · 2 failed | 4.3 MiB/s · ETA 2m40s"
    idle = Totals(datasets=16, downloaded=3, failed=0, bytes_on_disk=2048, shown=16)
    assert summary_line(idle, 78, palette).plain == "16 datasets · 3 downloaded · 2.0 KiB on disk"


def test_sparkline_scales_to_the_peak() -> None:
    assert sparkline([], 10) == ""
    assert sparkline([0.0] * 60, 12) == "▁" * 12
    line = sparkline([float(i) for i in range(60)], 12)
    assert len(line) == 12 and line[0] == "▁" and line[-1] == "█"
    assert list(line) == sorted(line)


def test_a_retrying_or_waiting_row_shows_the_bytes_it_already_has() -> None:
    """The bar follows the job's last progress (its partial file) while it waits to try
    again, or waits to resume, not the stored 0 %."""
    ds = Dataset("d", status=Status.DOWNLOADING)
    running = job("d", JobStatus.RUNNING, bytes_done=300, bytes_total=1000)
    assert shown_progress(ds, running) == 30.0
    retrying = job("d", JobStatus.RETRYING, bytes_done=300, bytes_total=1000)
    assert shown_progress(ds, retrying) == 30.0
    paused = job("d", JobStatus.WAITING, bytes_done=750, bytes_total=1000, error=PAUSED_MESSAGE)
    assert shown_progress(ds, paused) == 75.0
    assert shown_progress(ds, job("d", JobStatus.RETRYING, bytes_total=1000)) == 0.0  # none yet
    done = Dataset("d", status=Status.DOWNLOADED)  # an update waiting with nothing fetched yet
    assert shown_progress(done, job("d", JobStatus.WAITING, bytes_total=1000)) == 100.0
    failed = job("d", JobStatus.FAILED, bytes_done=300, bytes_total=1000)
    assert shown_progress(Dataset("d", download_progress=5.0), failed) == 5.0  # the stored one
    state = DashboardState(own_engine="me", max_attempts=4)
    state.apply_snapshot([ds], [])
    state.apply_job(retrying)
    row = state.row("d")
    assert shown_progress(row.ds, row.job) == 30.0


def stored(name: str, created: int, status: JobStatus = JobStatus.WAITING) -> Job:
    out = job(name, status, created_ms=created)
    out.id = f"j-{name}-{created}"
    return out


def test_the_job_log_reads_jobs_newest_first_with_our_live_copies() -> None:
    state = DashboardState(own_engine="me", max_attempts=4)
    old, mid = stored("a", 1), stored("b", 2)
    state.apply_snapshot([Dataset("a"), Dataset("b"), Dataset("c")], [old, mid])
    live = stored("b", 2, JobStatus.RUNNING)
    live.attempts = 1
    state.apply_job(live, Dataset("b", status=Status.DOWNLOADING))  # ahead of the store
    fresh = stored("c", 3)  # queued since the last store read
    state.apply_job(fresh)
    log = state.log_jobs()
    assert len(log) == 3
    assert [log[i] for i in range(3)] == [fresh, live, old]
    assert log[1].attempts == 1
    with pytest.raises(IndexError):
        log[3]
    state.apply_snapshot([Dataset("a"), Dataset("b"), Dataset("c")], [old, mid, fresh])
    log = state.log_jobs()
    assert len(log) == 3 and log[0] is fresh  # now read from the store, once only
    finished = stored("b", 2, JobStatus.COMPLETED)
    state.apply_job(finished)  # ours no longer: the stored copy until the next read
    assert state.log_jobs()[1] is mid
    assert state.log_name_width == 1
    state.apply_job(stored("a-long-name", 4))
    assert state.log_name_width == len("a-long-name")  # a job not read yet counts too


def test_the_heap_is_frozen_after_a_read_of_many_new_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Counted at the call: the frozen count itself drops whenever a frozen object is freed.
    freezes: list[None] = []
    real_freeze = gc.freeze

    def freeze() -> None:
        freezes.append(None)
        real_freeze()

    monkeypatch.setattr(gc, "freeze", freeze)
    heap = HeapFreezer()
    gc.unfreeze()  # whatever an app earlier in this process froze
    try:
        heap.after_read(FREEZE_ROWS - 1)  # a small store: nothing to gain
        assert not freezes and gc.get_freeze_count() == 0
        heap.after_read(FREEZE_ROWS)
        assert len(freezes) == 1 and gc.get_freeze_count() > 0
        heap.after_read(FREEZE_ROWS + 10)  # a few more rows: not again
        assert len(freezes) == 1
        heap.after_read(2 * FREEZE_ROWS + 10)  # a thousand more: again
        assert len(freezes) == 2
    finally:
        gc.unfreeze()


def test_a_job_we_adopted_counts_once_before_the_store_says_it_is_ours() -> None:
    state = DashboardState(own_engine="me", clock=Clock())
    orphans = [job(n, JobStatus.WAITING, owner="gone") for n in "ab"]
    state.apply_snapshot([Dataset(n) for n in "abc"], orphans)
    assert state.totals(shown=3).queued == 2
    state.apply_job(job("a", JobStatus.WAITING, owner="me"))  # adopted, not yet re-read
    state.apply_job(job("c", JobStatus.WAITING, owner="me"))
    assert state.totals(shown=3).queued == 3


def test_a_server_s_error_text_cannot_drive_the_terminal() -> None:
    """Errors quote servers (a reason phrase, a body): rows, job cells and notifications show
    controls and bidi overrides as escapes."""
    cause = short_cause("HTTP 500 \x1b]2;PWNED\x07 \u202eevil \x9b31m from http://h/x")
    assert cause == r"HTTP 500 \x1b]2;PWNED\x07 \u202eevil \x9b31m"


def on_disk(name: str, **kw: Any) -> Dataset:
    fields: dict[str, Any] = {"local_path": name, "status": Status.DOWNLOADED, "downloaded": True}
    fields |= kw
    return Dataset(name, **fields)


def test_the_probe_finds_copies_removed_or_changed_by_hand_in_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "PROBE_ROWS", 2)
    rows = []
    for name in "abcde":
        (tmp_path / name).write_bytes(b"x")
        rows.append(on_disk(name, size=1, file_mtime_ns=(tmp_path / name).stat().st_mtime_ns))
    probe = feed.CopyProbe(tmp_path)
    assert probe.look(rows) is False  # every row is new: all looked at once
    (tmp_path / "e").unlink()
    (tmp_path / "b").write_bytes(b"")  # truncated by hand
    # Unchanged rows are looked at PROBE_ROWS a poll, in turn (the first took a and b).
    assert [probe.look(rows), probe.look(rows)] == [False, True]
    assert probe.seen == {"e": (rows[4], MISSING)}
    assert probe.look(rows) is True and probe.seen["b"] == (rows[1], CHANGED)
    again = [*rows[:4], on_disk("e", size=1)]  # a new read of its row: looked at at once
    assert probe.look(again) is True and probe.seen["e"] == (again[4], MISSING)
    assert probe.look(again[:4]) is True and set(probe.seen) == {"b"}  # e left the store
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    tree = on_disk("t", local_path="a", manifest=[], file_mtime_ns=1)  # a folder: a verify
    odd = [Dataset("f", local_path="f"), on_disk("g", local_path="../g"), on_disk("link"), tree]
    assert probe.look(odd) is True and probe.seen == {"link": (odd[2], MISSING)}


def test_a_row_says_its_copy_is_missing_only_as_the_probe_saw_it() -> None:
    state = DashboardState("me")
    row = on_disk("a", size=3000)
    state.apply_snapshot([row, on_disk("b", size=500)], [])
    assert state.disk.apply({"a": (row, MISSING), "zz": (on_disk("zz"), MISSING)}) == {"a"}
    assert state.row("a").info == "missing on disk: d fetches it again"
    assert state.row("b").info == ""
    # The summary said `2 downloaded · 3.4 KiB on disk` of one copy of 500 bytes.
    t = state.totals(shown=2)
    assert (t.downloaded, t.missing, t.bytes_on_disk) == (1, 1, 500)
    line = summary_line(t, 200, {str(k): v for k, v in COLOUR.items()}).plain
    assert line == "2 datasets · 1 downloaded · 500 B on disk · 1 missing on disk"
    assert state.disk.apply({"a": (row, MISSING)}) == frozenset()  # nothing changed
    assert state.disk.apply({"a": (row, CHANGED)}) == {"a"}
    assert state.row("a").info == "changed on disk: v verifies it, f fetches it again"
    assert state.totals(shown=2).missing == 0  # changed, not missing: still on disk
    # A download since put a new copy there: its row is newer than what the probe saw.
    state.apply_job(job("a", JobStatus.COMPLETED), on_disk("a", size=5, updated_at_ms=9))
    assert state.row("a").info == ""
    assert state.disk.apply({}) == {"a"}


def test_a_pending_cancel_of_another_processs_job_ends_with_the_job() -> None:
    """`c` on a row another process downloads: the row said `cancel pending` for good, after
    that process had canceled the job (only our own jobs' ends cleared it)."""
    state = DashboardState("me")
    rows = [Dataset("a", local_path="a"), Dataset("b", local_path="b")]
    theirs = [job("a", owner="other"), job("b", owner="other")]
    state.apply_snapshot(rows, theirs)
    state.ask(["a", "b"], "cancel")
    assert state.row("a").info == "cancel pending"
    ended = job("a", JobStatus.CANCELED, owner="other")
    assert state.apply_snapshot(rows, [ended, theirs[1]]).names == {"a"}
    assert (state.row("a").info, state.row("b").info) == ("", "cancel pending")


def test_a_jobs_end_is_notified_with_what_happened() -> None:
    verify = Job(JobType.VERIFY, "a", {}, status=JobStatus.SKIPPED, error="not downloaded")
    assert job_notice(verify) == ("a: not downloaded", False)  # was `already downloaded`
    assert job_notice(job("a", JobStatus.SKIPPED)) == (
        "a: already downloaded (f fetches again)",
        False,
    )
    verify.status, verify.error = JobStatus.COMPLETED, None
    assert job_notice(verify) == ("a: verified, the copy on disk is as recorded", False)
    assert job_notice(job("a", JobStatus.COMPLETED)) is None  # the row says it
    failed = job("a", JobStatus.FAILED, error="HTTP 404 Not Found from http://h/a")
    assert job_notice(failed) == ("a failed: HTTP 404 Not Found", True)
