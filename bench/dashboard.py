"""bench/dashboard: the dashboard at 10,000 datasets against issue 4's targets.

    python -m bench.dashboard [--rows 10000] [--downloads 8] [--seconds 10] [--keys 60]
    python -m bench.dashboard --quit-and-log [--rows 10000] [--log-only]

Two runs, each on a fresh copy of one home (registered once, kept in /dev/shm):
- the installed `dsm` in tmux (a real terminal, 120x40): first paint from process start (the
  first row on screen), then the CPU of the process and of its UI (main) thread, idle and with
  the downloads running, from /proc/PID/stat and /proc/PID/task/PID/stat;
- the app in-process under `App.run_test` (headless, 120x40): first paint from App start,
  key press to repaint while the downloads run, and CPU by `process_time` (every thread) and
  the UI thread's `thread_time`.
The downloads come from nginx on 127.0.0.1 with `limit_rate`, so they last the whole window.

`--quit-and-log` (no nginx needed) queues a job for every dataset against a local server that
sends 64 KiB/s forever (so the workers' jobs are mid-transfer), then
measures in tmux the time from `y` (quit anyway) to the process's exit, and in-process the
time from `l` to the first frame composed with the job log on screen (every job in it), and
from escape to the first frame without it. `--log-only` skips the quit run (it reuses the
jobs a first run left in /dev/shm).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from textual import events
from textual.screen import Screen
from textual.strip import Strip

from bench.common import SHM, dsm_cmd, machine, need, nginx, random_file
from dsm.catalog.parse import load_catalog
from dsm.catalog.sync import register, sync_catalog
from dsm.config import Settings, load_settings
from dsm.repository import Repository
from dsm.tui.app import DashboardApp

SIZE = (120, 40)
PLACEHOLDER = "http://127.0.0.1:1"  # the pristine home's base URL, swapped for nginx's per run
FILE_MIB = 64
RATE = "1m"  # nginx limit_rate per connection: a 64 MiB file takes about a minute
RATE_LABEL = "1 MiB/s"
ENV = {"DSM_SEGMENTS": "1", "TEXTUAL_ANIMATIONS": "none"}  # one connection per download
TICK = os.sysconf("SC_CLK_TCK")
TIMES = 5  # the job log is opened and closed this many times
TARGETS = {
    "first paint": "< 1.5 s",
    "key to repaint p95": "< 100 ms",
    "idle CPU": "< 3 %",
    "CPU, downloads running": "< 15 %",
}


def pristine(rows: int) -> Path:
    """A home with `rows` datasets registered (the first registration is slow: made once)."""
    root = SHM.parent / f"dsm-bench-dashboard-{rows}"
    if (root / "home" / "db.json").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "home").mkdir(parents=True)
    entries = [
        {
            "name": f"ds-{i:05d}",
            "description": f"bench dataset {i} [v2]",
            "original_url": f"{PLACEHOLDER}/dash.bin",
            "local_path": f"data/ds-{i:05d}",
        }
        for i in range(rows)
    ]
    (root / "catalog.json").write_text(json.dumps({"datasets": entries}))
    print(f"registering {rows} datasets once in {root} (slow today; reused afterwards)…")
    home = root / "home"
    register(Repository.open(home / "db.json"), load_catalog(root / "catalog.json", home))
    return root


def fresh_copy(root: Path, work: Path, base: str) -> tuple[Path, Path]:
    """A copy of the pristine home whose URLs name this run's server; returns (home, catalog).
    The store gets the same URLs as the catalogue, so opening it registers nothing."""
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(root / "home", home)
    for source, copy in ((root / "catalog.json", work), (root / "home" / "db.json", home)):
        (copy / source.name).write_text(source.read_text().replace(PLACEHOLDER, base))
    # A home in use: its catalogue was registered by an earlier start (the stamp), as when a
    # user opens the dashboard again. A first start with a new catalogue adds ~1 s.
    sync_catalog(Repository.open(home / "db.json"), work / "catalog.json", home)
    return home, work / "catalog.json"


# -- the installed dsm in tmux -----------------------------------------------------------
def cpu_ticks(pid: int, tid: int | None = None) -> int:
    """utime + stime of a process (or one of its threads), in clock ticks."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@dataclass
class Cpu:
    process: float  # percent of one core
    ui: float


def cpu_over(seconds: float, process: Callable[[], float], ui: Callable[[], float]) -> Cpu:
    """CPU seconds spent per wall second over a window, as percent of one core."""
    p0, u0, t0 = process(), ui(), time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    return Cpu(100 * (process() - p0) / wall, 100 * (ui() - u0) / wall)


class Tmux:
    """One dsm in a tmux session on a private server socket."""

    def __init__(self, command: str) -> None:
        self.base = [need("tmux", "tmux"), "-L", f"dsm-bench-{os.getpid()}"]
        self.run("new-session", "-d", "-s", "dsm", "-x", str(SIZE[0]), "-y", str(SIZE[1]), command)

    def run(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "dsm")

    def wait(self, predicate: Callable[[str], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.screen()):
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: the dashboard did not show it:\n{self.screen()}")
            time.sleep(0.01)

    def close(self) -> None:
        self.run("kill-server")


def in_tmux(
    home: Path, catalog: Path, rows: int, downloads: int, seconds: float
) -> dict[str, float]:
    env = {**ENV, "DSM_HOME": str(home), "DSM_CATALOG": str(catalog), "DSM_WORKERS": str(downloads)}
    command = "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    start = time.perf_counter()
    term = Tmux(f"{command} {shlex.join(dsm_cmd())}")  # env execs dsm: the pane's pid is dsm's
    try:
        term.wait(lambda s: "ds-00000" in s, timeout=300)
        first_paint = time.perf_counter() - start
        pid = int(term.run("list-panes", "-t", "dsm", "-F", "#{pane_pid}").strip())
        term.wait(lambda s: f"{rows} datasets" in s, timeout=60)
        time.sleep(2)  # let start-up work (the engine, the first store read) end

        def process() -> float:
            return cpu_ticks(pid) / TICK

        def ui() -> float:
            return cpu_ticks(pid, pid) / TICK

        idle = cpu_over(seconds, process, ui)
        term.run("send-keys", "-t", "dsm", *["Space"] * downloads, "d")
        term.wait(lambda s: f"{downloads} downloading" in s and "/s" in s, timeout=60)
        time.sleep(2)  # every transfer under way
        busy = cpu_over(seconds, process, ui)
        term.run("send-keys", "-t", "dsm", "q")
        term.wait(lambda s: "Quit anyway?" in s, timeout=10)
        term.run("send-keys", "-t", "dsm", "y")
    finally:
        term.close()
    return {
        "first paint": first_paint,
        "idle CPU": idle.process,
        "idle CPU, UI thread": idle.ui,
        "CPU, downloads running": busy.process,
        "CPU, downloads running, UI thread": busy.ui,
    }


# -- the app in-process, headless ---------------------------------------------------------
async def in_process(
    settings: Settings, downloads: int, seconds: float, keys: int
) -> dict[str, Any]:
    repo = Repository.open(settings.db_path)
    sync_catalog(repo, settings.catalog, settings.home)
    app = DashboardApp(settings, repo)
    painted: list[float] = []  # frames with rows
    waiting: dict[str, float] = {}  # the row a key should highlight -> when it was sent
    latencies: list[float] = []
    frame = asyncio.Event()
    show = app._display

    def display(screen: Screen[Any], update: RenderableType | None) -> None:
        # Called with each frame just composed: the moment a change reaches the terminal.
        now = time.perf_counter()
        if update is not None and app.table.row_count:
            painted.append(now)
            sent = waiting.pop(app.table.highlighted or "", None)
            if sent is not None:
                latencies.append(now - sent)
        show(screen, update)
        frame.set()

    async def until(predicate: Callable[[], bool]) -> None:
        """Wait frame by frame (the app repaints at least on every progress flush)."""
        while not predicate():
            frame.clear()
            await frame.wait()

    app._display = display  # type: ignore[method-assign, assignment]
    start = time.perf_counter()
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: bool(painted))
        await asyncio.to_thread(app._engine_ready.wait)
        first_paint = painted[0] - start
        await asyncio.sleep(2)
        idle = await cpu_in_process(seconds)
        await pilot.press(*["space"] * downloads, "d")
        await until(lambda: app.state.totals(0).active >= downloads)
        await asyncio.sleep(2)
        rendered = [0]
        render_line = app.table.render_line

        def counted(y: int) -> Strip:
            rendered[0] += 1
            return render_line(y)

        app.table.render_line = counted  # type: ignore[method-assign]
        busy = await cpu_in_process(seconds)
        del app.table.render_line
        lines_per_second = rendered[0] / seconds
        driver = app._driver
        assert driver is not None
        for i in range(keys):
            key = "down" if (i // 10) % 2 == 0 else "up"  # stay within the first screen
            shown = app.table.shown()
            index = shown.index(app.table.highlighted or "")
            target = shown[index + (1 if key == "down" else -1)]
            waiting[target] = time.perf_counter()
            event = events.Key(key, None)
            event.set_sender(app)
            driver.send_message(event)
            await until(lambda: target not in waiting)  # noqa: B023 - awaited in this turn
            await asyncio.sleep(0.05)  # keys at a human pace, at any phase of the flush timer
        await pilot.press("q", "y")
    cut = statistics.quantiles(latencies, n=20)
    return {
        "first paint from App start": first_paint,
        "key to repaint p50": statistics.median(latencies),
        "key to repaint p95": cut[18],
        "table lines rendered per second": lines_per_second,
        "idle CPU": idle.process,
        "idle CPU, UI thread": idle.ui,
        "CPU, downloads running": busy.process,
        "CPU, downloads running, UI thread": busy.ui,
    }


async def cpu_in_process(seconds: float) -> Cpu:
    """CPU of every thread and of this one (the app's event loop) over a window."""
    p0, u0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - t0
    return Cpu(100 * (time.process_time() - p0) / wall, 100 * (time.thread_time() - u0) / wall)


# -- quit and the job log with every dataset queued --------------------------------------
class _Trickle(http.server.BaseHTTPRequestHandler):
    """An endless download at 64 KiB/s: every worker's job stays mid-transfer."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        with contextlib.suppress(OSError):
            while True:
                self.wfile.write(b"x" * 16384)
                time.sleep(0.25)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def quit_in_tmux(home: Path, catalog: Path, rows: int) -> dict[str, float]:
    """`a` on every dataset, then `q`, `y`: seconds from `y` to the process's exit."""
    env = {**ENV, "DSM_HOME": str(home), "DSM_CATALOG": str(catalog)}
    command = "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    term = Tmux(f"{command} {shlex.join(dsm_cmd())}; echo dsm exited $?; sleep 60")
    try:
        term.wait(lambda s: f"{rows} datasets" in s, timeout=300)
        term.run("send-keys", "-t", "dsm", "a")
        term.wait(lambda s: " queued" in s and "downloading" in s, timeout=120)
        time.sleep(2)
        term.run("send-keys", "-t", "dsm", "q")
        term.wait(lambda s: "Quit anyway?" in s, timeout=10)
        start = time.perf_counter()
        term.run("send-keys", "-t", "dsm", "y")
        stopping = False
        while "dsm exited" not in (screen := term.screen()):
            stopping = stopping or "stopping" in screen
            if time.perf_counter() - start > 600:
                raise SystemExit(f"bench: dsm did not exit:\n{screen}")
            time.sleep(0.01)
        quit_s = time.perf_counter() - start
    finally:
        term.close()
    return {"quit": quit_s, "stopping shown": float(stopping)}


async def job_log_in_process(settings: Settings, rows: int) -> dict[str, float]:
    """Open and close the job log with `rows` jobs in the store (the suspended ones): from the
    key to the first frame composed with the log on screen (with every job), and back."""
    repo = Repository.open(settings.db_path)
    app = DashboardApp(settings, repo)
    frames: list[tuple[float, bool]] = []  # when each frame was composed, log on screen
    show = app._display

    def display(screen: Screen[Any], update: RenderableType | None) -> None:
        shown = app.log_open and len(app.job_log.log_view.jobs) >= rows
        show(screen, update)
        frames.append((time.perf_counter(), shown))

    async def first_frame(start: float, shown: bool) -> float:
        while not (found := [t for t, s in frames if t > start and s == shown]):
            await pilot.pause(0.001)
        return found[0] - start

    app._display = display  # type: ignore[method-assign, assignment]
    async with app.run_test(size=SIZE) as pilot:
        while len(app.state.log_jobs()) < rows:
            await pilot.pause(0.1)
        await pilot.pause(1)
        opened: list[float] = []
        closed: list[float] = []
        for _ in range(TIMES):
            start = time.perf_counter()
            await pilot.press("l")
            opened.append(await first_frame(start, True))
            await pilot.pause(0.5)
            start = time.perf_counter()
            await pilot.press("escape")
            closed.append(await first_frame(start, False))
            await pilot.pause(0.5)
        app.exit(0)
    return {
        "open": statistics.median(opened),
        "open max": max(opened),
        "close": statistics.median(closed),
        "close max": max(closed),
        "jobs": float(len(app.state.log_jobs())),
    }


def trickle_server(port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def queued_home(rows: int, log_only: bool) -> tuple[Path, str, dict[str, float] | None]:
    """A home where every dataset has a queued job, kept in /dev/shm with its server's base
    URL, made by the quit run (its result returned) unless `log_only` finds one."""
    kept = SHM.parent / f"dsm-bench-joblog-{rows}"
    if log_only and (kept / "base").exists():
        return kept, (kept / "base").read_text(), None
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    server, base = trickle_server()
    home, catalog = fresh_copy(pristine(rows), kept, base)
    try:
        quit = quit_in_tmux(home, catalog, rows)
    finally:
        server.shutdown()
    (kept / "base").write_text(base)
    return kept, base, quit


def quit_and_log(rows: int, log_only: bool) -> str:
    kept, base, quit = queued_home(rows, log_only)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dsm-bench-") as tmp:
        work = Path(tmp)
        shutil.copytree(kept / "home", work / "home")
        server, _ = trickle_server(int(base.rsplit(":", 1)[1]))  # the URLs the jobs hold
        catalog = str(kept / "catalog.json")
        settings = load_settings(home=str(work / "home"), catalog=catalog, env=ENV)
        log = asyncio.run(job_log_in_process(settings, rows))
        server.shutdown()
    lines = [
        f"{rows} datasets, a job queued for each (the running ones mid-transfer at 64 KiB/s)"
        f", {SIZE[0]}x{SIZE[1]}; {machine()}; load average {load:.1f} at the start",
        "",
        "| measure | result | target |",
        "|---|---|---|",
    ]
    if quit is not None:
        lines.append(
            f"| quit with {rows} queued jobs: `y` to process exit (tmux) | {quit['quit']:.2f} s"
            f"{', stopping message shown' if quit['stopping shown'] else ''} | < 2 s |"
        )
    return "\n".join(
        [
            *lines,
            f"| open job log at {int(log['jobs'])} jobs: `l` to its first frame, median"
            f" (max) of {TIMES} | {log['open'] * 1000:.0f} ms ({log['open max'] * 1000:.0f} ms)"
            " | < 200 ms |",
            f"| close job log: escape to the dashboard's frame, median (max) |"
            f" {log['close'] * 1000:.0f} ms ({log['close max'] * 1000:.0f} ms) | - |",
        ]
    )


# -- the report ---------------------------------------------------------------------------
def report(tmux: dict[str, float], inproc: dict[str, Any], rows: int, downloads: int) -> str:
    def ms(v: float) -> str:
        return f"{v * 1000:.0f} ms"

    def pct(v: float) -> str:
        return f"{v:.1f} %"

    lines = [
        f"{rows} datasets, {downloads} downloads from nginx on 127.0.0.1 at {RATE_LABEL} each, "
        f"{SIZE[0]}x{SIZE[1]}; {machine()}",
        "",
        "| measure | dsm in tmux | in-process (run_test, headless) | target |",
        "|---|---|---|---|",
        f"| first paint | {tmux['first paint']:.2f} s from process start | "
        f"{inproc['first paint from App start']:.2f} s from App start | "
        f"{TARGETS['first paint']} |",
        f"| key press to repaint p50 / p95, downloads running | - | "
        f"{ms(inproc['key to repaint p50'])} / {ms(inproc['key to repaint p95'])} | "
        f"p95 {TARGETS['key to repaint p95']} |",
    ]
    lines.append(
        f"| table lines rendered per second, downloads running | - | "
        f"{inproc['table lines rendered per second']:.0f} | - |"
    )
    for name in ("idle CPU", "CPU, downloads running"):
        lines.append(
            f"| {name}: process / UI thread | {pct(tmux[name])} / {pct(tmux[name + ', UI thread'])}"
            f" | {pct(inproc[name])} / {pct(inproc[name + ', UI thread'])} | {TARGETS[name]} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--downloads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--keys", type=int, default=60)
    ap.add_argument("--quit-and-log", action="store_true", help="only the quit and job log runs")
    ap.add_argument("--log-only", action="store_true", help="the job log run alone (see above)")
    args = ap.parse_args()
    if args.quit_and_log or args.log_only:
        print(quit_and_log(args.rows, args.log_only))
        return
    root = pristine(args.rows)
    random_file("dash.bin", FILE_MIB << 20)
    with nginx(SHM, RATE) as base, tempfile.TemporaryDirectory(prefix="dsm-bench-") as tmp:
        work = Path(tmp)
        home, catalog = fresh_copy(root, work, base)
        tmux = in_tmux(home, catalog, args.rows, args.downloads, args.seconds)
        home, catalog = fresh_copy(root, work, base)
        env = {**ENV, "DSM_WORKERS": str(args.downloads)}
        settings = load_settings(home=str(home), catalog=str(catalog), env=env)
        inproc = asyncio.run(in_process(settings, args.downloads, args.seconds, args.keys))
    print(report(tmux, inproc, args.rows, args.downloads))


if __name__ == "__main__":
    main()
