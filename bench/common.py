"""Shared by the bench scripts: a local nginx, test files in /dev/shm, timed child processes.

Benchmarks are run by hand (`python -m bench.download` ...). They compare dsm with a peer
run in the same script on the same file, alternating runs, and print medians and ratios.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SHM = Path("/dev/shm/dsm-bench")
NGINX_CONF = """
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
daemon on;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        {limit}
    }}
}}
"""


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"bench: {tool} is missing; install it with: apt-get install -y {package}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def nginx(root: Path, rate_per_connection: str | None = None) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 with Debian's nginx; yields the base URL."""
    exe = need("nginx", "nginx")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dsm-nginx-") as tmp:
        limit = f"limit_rate {rate_per_connection};" if rate_per_connection else ""
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root, limit=limit))
        subprocess.run([exe, "-c", str(conf), "-p", tmp, "-e", f"{tmp}/error.log"], check=True)
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            pid = int((Path(tmp) / "nginx.pid").read_text())
            os.kill(pid, 15)


def random_file(name: str, size: int) -> tuple[Path, str]:
    """A file of random bytes in /dev/shm (made once, reused); returns its path and SHA-256."""
    SHM.mkdir(parents=True, exist_ok=True)
    path = SHM / name
    digest_file = SHM / f"{name}.sha256"
    if not path.exists() or path.stat().st_size != size or not digest_file.exists():
        digest = hashlib.sha256()
        with path.open("wb") as fh:
            left = size
            while left:
                block = os.urandom(min(left, 8 << 20))
                fh.write(block)
                digest.update(block)
                left -= len(block)
        digest_file.write_text(digest.hexdigest())
    return path, digest_file.read_text().strip()


def write_catalog(path: Path, entries: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"datasets": entries}))
    return path


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mib: float


def timed(cmd: Sequence[str], env: dict[str, str] | None = None) -> Sample:
    """Run a command; wall time, CPU time (user+sys) and peak RSS of that one child."""
    # stderr to a file, not a pipe: a child that says much (a line per job at 10,000 jobs)
    # would block on a full pipe nobody reads until it exits.
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            sys.exit(f"bench: {cmd[0]} failed: {errors.read().decode()[-2000:]}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def alternate(runs: int, tools: Mapping[str, Callable[[], Sample]]) -> dict[str, list[Sample]]:
    """Run each tool once per round, in turn (A B C A B C ...), so drift hits all alike."""
    results: dict[str, list[Sample]] = {name: [] for name in tools}
    for _ in range(runs):
        for name, run in tools.items():
            results[name].append(run())
    return results


def table(results: dict[str, list[Sample]], baseline: str) -> str:
    """A Markdown table of medians, with each tool's wall-time ratio to the baseline."""
    base = statistics.median(s.wall for s in results[baseline])
    lines = [
        "| tool | runs | median wall s | median CPU s | median peak RSS MiB | ratio to "
        f"{baseline} |",
        "|---|---|---|---|---|---|",
    ]
    for tool, samples in results.items():
        wall = statistics.median(s.wall for s in samples)
        cpu = statistics.median(s.cpu for s in samples)
        rss = statistics.median(s.rss_mib for s in samples)
        lines.append(
            f"| {tool} | {len(samples)} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {wall / base:.2f}x |"
        )
    return "\n".join(lines)


def dsm_env(home: Path, catalog: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "DSM_HOME": str(home), "DSM_CATALOG": str(catalog), **extra}
    compile_dsm(env)
    return env


_COMPILED: set[str] = set()


def compile_dsm(env: Mapping[str, str]) -> None:
    """Write the bytecode of the dsm that `env` imports, once, as `pip install` does. The
    development machine sets PYTHONDONTWRITEBYTECODE=1, so an editable install would
    otherwise compile every module from source at every start (~0.3 s of CPU a run)."""
    key = env.get("PYTHONPATH", "")
    if key in _COMPILED:
        return
    _COMPILED.add(key)
    code = (
        "import compileall, dsm, os; compileall.compile_dir(os.path.dirname(dsm.__file__), quiet=1)"
    )
    subprocess.run([sys.executable, "-c", code], env=dict(env), check=True)


def fresh_dsm_run(home: Path, catalog: Path, *args: str, **extra: str) -> Sample:
    """One `dsm --run-job download` from an empty home (the files are fetched every time)."""
    shutil.rmtree(home, ignore_errors=True)
    return timed([*dsm_cmd(), "--run-job", "download", *args], dsm_env(home, catalog, **extra))


def sources_copy(checkout: Path, dest: Path) -> Path:
    """The package `dsm` of another checkout (say main's, for "before" rows), laid out as
    pyproject's package-dir installs it, under `dest`: put `dest` on PYTHONPATH to run it."""
    pkg = dest / "dsm"
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(checkout / "app", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("widgets", "store"):
        shutil.copytree(checkout / sub, pkg / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def dsm_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "dsm"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dsm"]


def machine() -> str:
    cpus = os.cpu_count()
    return (
        f"{os.uname().sysname} {os.uname().machine}, {cpus} cores, Python {sys.version.split()[0]}"
    )
