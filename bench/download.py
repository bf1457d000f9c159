"""bench/download: one large file, dsm against curl, wget and aria2c, alternated runs.

    python -m bench.download [--size-mib 1024] [--runs 5]

dsm's run includes the SHA-256 check against `expected_sha256` and the atomic rename.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.common import (
    Sample,
    alternate,
    fresh_dsm_run,
    machine,
    need,
    nginx,
    random_file,
    table,
    timed,
    write_catalog,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    curl, wget, aria2c = need("curl", "curl"), need("wget", "wget"), need("aria2c", "aria2")
    src, digest = random_file(f"single-{args.size_mib}m.bin", args.size_mib << 20)
    with nginx(src.parent) as base, tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        url = f"{base}/{src.name}"
        out = Path(work) / "out.bin"
        catalog = write_catalog(
            Path(work) / "catalog.json",
            [
                {
                    "name": "big",
                    "description": "bench",
                    "original_url": url,
                    "local_path": "big.bin",
                    "expected_size": args.size_mib << 20,
                    "expected_sha256": digest,
                }
            ],
        )

        def fetch_with(cmd: list[str]) -> Callable[[], Sample]:
            def run() -> Sample:
                out.unlink(missing_ok=True)
                return timed(cmd)

            return run

        results = alternate(
            args.runs,
            {
                "curl -o": fetch_with([curl, "-s", "-o", str(out), url]),
                "wget -O": fetch_with([wget, "-q", "-O", str(out), url]),
                "aria2c": fetch_with(
                    [
                        aria2c,
                        "-q",
                        "--allow-overwrite=true",
                        "--file-allocation=none",
                        f"--checksum=sha-256={digest}",
                        "-d",
                        work,
                        "-o",
                        "out.bin",
                        url,
                    ]
                ),
                "dsm": partial(fresh_dsm_run, Path(work) / "home", catalog, "--all"),
                "dsm single stream": partial(
                    fresh_dsm_run, Path(work) / "home", catalog, "--all", DSM_SEGMENTS="1"
                ),
            },
        )
    print(f"1 file of {args.size_mib} MiB from nginx on 127.0.0.1 to disk; {machine()}")
    print(table(results, "curl -o"))


if __name__ == "__main__":
    main()
