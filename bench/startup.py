"""bench/startup: dsm's start-up and its 10,000-dataset runs, this tree against an earlier one.

    python -m bench.startup --before-ref main [--runs 5] [--big-runs 3] [--download-runs 1]

Rows (issue 17, points 1 and 3), each run alternating "before" and "after" in this script:
- `--run-job download --all` with nothing to do on 500 datasets (mostly start-up);
- the same on 10,000 datasets (under 3 s wanted), with db.json's size before and after;
- `--run-job download --all` of 10,000 files of 1 KB from an empty home (peak RSS under
  150 MB wanted; ~2-4 min a run).

"Before" is the sources of `--before-ref` (a git ref of this repository) laid out as the
installed package and put first on PYTHONPATH; "after" is the installed dsm. Both run as
`python -c 'from dsm.cli import main ...'` with bytecode caches (an installed dsm has them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.common import SHM, Sample, alternate, machine, nginx, timed
from bench.smallfiles import catalogues, file_set

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = "import sys; from dsm.cli import main; sys.exit(main())"
ALL = ("--run-job", "download", "--all")


def checkout(ref: str, into: Path) -> Path:
    """The package `dsm` of `ref`, laid out as installed (app/ is dsm, store/ and widgets/
    its subpackages); returns the folder to put on PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "app", "store", "widgets"],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "app").rename(into / "dsm")
    for sub in ("store", "widgets"):
        (into / sub).rename(into / "dsm" / sub)
    return into


def env_for(tree: Path | None, home: Path, catalog: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(DSM_HOME=str(home), DSM_CATALOG=str(catalog))
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def dsm(tree: Path | None, home: Path, catalog: Path) -> Sample:
    return timed([sys.executable, "-c", LAUNCH, *ALL], env_for(tree, home, catalog))


def noop(tree: Path | None, home: Path, catalog: Path, sizes: list[tuple[int, int]]) -> Sample:
    db = home / "db.json"
    before = db.stat().st_size
    sample = dsm(tree, home, catalog)
    sizes.append((before, db.stat().st_size))
    return sample


def fresh(tree: Path | None, home: Path, catalog: Path) -> Sample:
    shutil.rmtree(home, ignore_errors=True)
    return dsm(tree, home, catalog)


def rows(results: dict[str, list[Sample]]) -> list[str]:
    out = []
    for name, samples in results.items():
        walls = sorted(s.wall for s in samples)
        out.append(
            f"| {name} | {len(samples)} | {statistics.median(walls):.2f} "
            f"({walls[0]:.2f}-{walls[-1]:.2f}) | {statistics.median(s.cpu for s in samples):.2f} "
            f"| {max(s.rss_mib for s in samples):.0f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before-ref", required=True, help="git ref of the 'before' sources")
    ap.add_argument("--runs", type=int, default=5, help="rounds of the 500-dataset no-op")
    ap.add_argument("--big-runs", type=int, default=3, help="rounds of the 10,000 no-op")
    ap.add_argument("--download-runs", type=int, default=1, help="rounds of the download")
    args = ap.parse_args()
    small = file_set("small-500", 500, 40 * 1024)
    big = file_set("tiny-10000", 10_000, 1024)
    header = "| tool | runs | median wall s (range) | median CPU s | max peak RSS MiB |"
    rule = "|---|---|---|---|---|"
    with nginx(SHM) as base, tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        root = Path(work)
        trees: dict[str, Path | None] = {
            "before": checkout(args.before_ref, root / "before"),
            "after": None,
        }
        report: list[str] = []
        for tag, files, runs in (("500", small, args.runs), ("10000", big, args.big_runs)):
            catalog, _ = catalogues(root, base, files, tag)
            ready = root / f"home-{tag}"
            dsm(None, ready, catalog)  # downloaded once; both read the same store format
            tools: dict[str, Callable[[], Sample]] = {}
            sizes: dict[str, list[tuple[int, int]]] = {}
            for name, tree in trees.items():
                home = root / f"{name}-{tag}"
                shutil.copytree(ready, home, symlinks=True)
                dsm(tree, home, catalog)  # warm: bytecode written, the store in its steady state
                sizes[name] = []
                tools[name] = partial(noop, tree, home, catalog, sizes[name])
            results = alternate(runs, tools)
            report += [f"\n`--all` with nothing to do, {tag} datasets\n", header, rule]
            report += rows(results)
            for name, seen in sizes.items():
                report.append(f"\ndb.json {name}: " + ", ".join(f"{a} -> {b}" for a, b in seen))
        if args.download_runs:
            catalog = root / "catalog-10000.json"
            dl = alternate(
                args.download_runs,
                {
                    name: partial(fresh, tree, root / "fresh", catalog)
                    for name, tree in trees.items()
                },
            )
            report += ["\n`--all` from an empty home, 10,000 files of 1 KB\n", header, rule]
            report += rows(dl)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"nginx on 127.0.0.1, homes in /var/tmp; {machine()}; load at the end {load}")
    print(f"before: {args.before_ref}; after: the installed dsm")
    print("\n".join(report))


if __name__ == "__main__":
    main()
