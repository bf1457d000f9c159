"""bench/smallfiles: many small files with checksums, dsm against `aria2c -j8 --check-integrity`
and against the floor of a Python program with httpx (`bench.floor`).

    python -m bench.smallfiles [--runs 3] [--big-runs 1] [--small 500] [--big 10000]

Rows: `--small` files of 40 KB; `--big` tiny files of 1 KB (the per-job cost must not grow
with the number of datasets); the same `--all` again with nothing to do, with db.json's size
before and after. Every dsm run starts from an empty home; peak RSS is the child's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.common import (
    SHM,
    Sample,
    alternate,
    dsm_cmd,
    dsm_env,
    fresh_dsm_run,
    machine,
    need,
    nginx,
    table,
    timed,
    write_catalog,
)
from dsm.config import DEFAULT_WORKERS

ARIA = "aria2c -j8 --check-integrity"
FLOOR = f"floor: httpx, {DEFAULT_WORKERS} threads (bench.floor)"
Files = list[tuple[str, str]]  # (file name under SHM, SHA-256)


def file_set(prefix: str, count: int, size: int) -> Files:
    """`count` files of random bytes under SHM/prefix (made once, reused) and their hashes."""
    folder = SHM / prefix
    digests = folder / "sha256.json"
    if digests.exists():
        known: dict[str, str] = json.loads(digests.read_text())
        if len(known) == count:
            return [(f"{prefix}/{name}", sha) for name, sha in sorted(known.items())]
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    for i in range(count):
        body = os.urandom(size)
        (folder / f"f{i:05d}.bin").write_bytes(body)
        made[f"f{i:05d}.bin"] = hashlib.sha256(body).hexdigest()
    digests.write_text(json.dumps(made))
    return [(f"{prefix}/{name}", sha) for name, sha in sorted(made.items())]


def catalogues(root: Path, base: str, files: Files, tag: str) -> tuple[Path, Path]:
    """dsm's catalogue and aria2c's input file (one URI, its name and checksum per entry)."""
    catalog = write_catalog(
        root / f"catalog-{tag}.json",
        [
            {
                "name": f"d{i:05d}",
                "description": "bench",
                "original_url": f"{base}/{path}",
                "local_path": f"d{i:05d}.bin",
                "expected_sha256": sha,
            }
            for i, (path, sha) in enumerate(files)
        ],
    )
    listing = root / f"aria2-{tag}.txt"
    listing.write_text(
        "".join(
            f"{base}/{path}\n  out=d{i:05d}.bin\n  checksum=sha-256={sha}\n"
            for i, (path, sha) in enumerate(files)
        )
    )
    return catalog, listing


def aria2c_run(aria2c: str, listing: Path, out: Path) -> Callable[[], Sample]:
    def run() -> Sample:
        shutil.rmtree(out, ignore_errors=True)
        return timed(
            [
                aria2c,
                "-q",
                "-j8",
                "--check-integrity=true",
                "--allow-overwrite=true",
                "--file-allocation=none",
                "-d",
                str(out),
                "-i",
                str(listing),
            ]
        )

    return run


def floor_run(catalog: Path, out: Path) -> Callable[[], Sample]:
    def run() -> Sample:
        shutil.rmtree(out, ignore_errors=True)
        return timed([sys.executable, "-m", "bench.floor", str(catalog), str(out)])

    return run


def per_file_ms(samples: list[Sample], count: int) -> float:
    return 1000 * statistics.median(s.wall for s in samples) / count


def noop_rows(runs: int, home: Path, catalog: Path) -> list[str]:
    """`--all` again on the home the last dsm run downloaded: time and db.json growth."""
    db = home / "db.json"
    lines = []
    for _ in range(runs):
        before = db.stat().st_size
        sample = timed([*dsm_cmd(), "--run-job", "download", "--all"], dsm_env(home, catalog))
        after = db.stat().st_size
        lines.append(
            f"| {sample.wall:.2f} | {sample.cpu:.2f} | {sample.rss_mib:.0f} | "
            f"{before / 1e6:.2f} | {after / 1e6:.2f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3, help="rounds for the small set")
    ap.add_argument("--big-runs", type=int, default=1, help="rounds for the big set")
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--big", type=int, default=10_000)
    args = ap.parse_args()
    aria2c = need("aria2c", "aria2")
    small = file_set(f"small-{args.small}", args.small, 40 * 1024)
    big = file_set(f"tiny-{args.big}", args.big, 1024)
    with nginx(SHM) as base, tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        root = Path(work)
        home = root / "home"
        results: dict[str, dict[str, list[Sample]]] = {}
        sets = [("small", small, args.runs)] + [("big", big, args.big_runs)] * bool(args.big_runs)
        for tag, files, runs in sets:
            catalog, listing = catalogues(root, base, files, tag)
            results[tag] = alternate(
                runs,
                {
                    ARIA: aria2c_run(aria2c, listing, root / "aria2"),
                    "dsm": partial(fresh_dsm_run, home, catalog, "--all"),
                    FLOOR: floor_run(catalog, root / "floor"),
                },
            )
        noop = noop_rows(args.big_runs, home, root / "catalog-big.json") if args.big_runs else []
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"nginx on 127.0.0.1, files from /dev/shm to /var/tmp; {machine()}; load {load}")
    print(f"\n{args.small} files of 40 KB\n")
    print(table(results["small"], ARIA))
    if args.big_runs:
        print(f"\n{args.big} files of 1 KB\n")
        print(table(results["big"], ARIA))
    print("\nper-file wall time (median wall / files), ms\n")
    print("| files | dsm | floor | aria2c |\n|---|---|---|---|")
    for tag, count in (("small", args.small), ("big", args.big)):
        if tag not in results:
            continue
        res = results[tag]
        dsm_ms, floor_ms, aria_ms = (per_file_ms(res[tool], count) for tool in ("dsm", FLOOR, ARIA))
        print(f"| {count} | {dsm_ms:.2f} | {floor_ms:.2f} | {aria_ms:.2f} |")
    if not noop:
        return
    print(f"\n`--all` again on {args.big} downloaded datasets (nothing to do)\n")
    print("| wall s | CPU s | peak RSS MiB | db.json MB before | after |\n|---|---|---|---|---|")
    print("\n".join(noop))


if __name__ == "__main__":
    main()
