"""bench/store: the store under the engine's load with 10,000 datasets and 8 active jobs.

    python -m bench.store [--datasets 10000] [--writes 50]

Each write is what the engine's progress flush does once a second: one locked transaction
updating 8 jobs and their 8 datasets, then an atomic rewrite of db.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine
from dsm.catalog.parse import load_catalog
from dsm.catalog.sync import register
from dsm.domain.jobs import Job, JobType
from dsm.repository import Repository

ACTIVE_JOBS = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datasets", type=int, default=10_000)
    ap.add_argument("--writes", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        home = Path(work)
        catalog = home / "catalog.json"
        rows = [
            {
                "name": f"ds{i:05d}",
                "description": f"benchmark dataset {i}",
                "original_url": f"http://127.0.0.1:9/{i}.bin",
                "local_path": f"data/{i}.bin",
            }
            for i in range(args.datasets)
        ]
        catalog.write_text(json.dumps({"datasets": rows}))
        repo = Repository.open(home / "db.json")
        t0 = time.perf_counter()
        register(repo, load_catalog(catalog, home))
        first = time.perf_counter() - t0
        jobs = [Job(JobType.DOWNLOAD, f"ds{i:05d}", {"dataset": f"ds{i:05d}"}) for i in range(8)]
        repo.save_jobs(jobs)
        walls: list[float] = []
        cpus: list[float] = []
        for n in range(args.writes):
            w0, c0 = time.perf_counter(), time.process_time()
            for job in jobs:
                job.bytes_done, job.progress = n, n / 100
            repo.write_progress(jobs)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        size = (home / "db.json").stat().st_size
    mean = statistics.mean(walls)
    print(f"{args.datasets} datasets, {ACTIVE_JOBS} active jobs; {machine()}")
    print("| measure | value |\n|---|---|")
    print(f"| first registration of the catalogue | {first:.2f} s |")
    print(f"| db.json size | {size / 1024:.0f} KiB |")
    print(f"| progress write (8 jobs + 8 datasets), mean | {mean * 1000:.1f} ms |")
    print(f"| progress write, max | {max(walls) * 1000:.1f} ms |")
    print(f"| writes per second at most | {1 / mean:.1f} |")
    print(f"| CPU per write, mean | {statistics.mean(cpus) * 1000:.1f} ms |")
    print(
        "| CPU of the engine's store writes (1 progress write/s) | "
        f"{statistics.mean(cpus) * 100:.1f} % of a core |"
    )


if __name__ == "__main__":
    main()
