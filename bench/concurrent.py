"""bench/concurrent: 8 files of 128 MiB, dsm with 8 workers against `aria2c -j8`.

python -m bench.concurrent [--files 8] [--size-mib 128] [--runs 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import (
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
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    aria2c = need("aria2c", "aria2")
    files = [
        random_file(f"multi-{i}-{args.size_mib}m.bin", args.size_mib << 20)
        for i in range(args.files)
    ]
    with nginx(files[0][0].parent) as base, tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        root = Path(work)
        catalog = write_catalog(
            root / "catalog.json",
            [
                {
                    "name": f"f{i}",
                    "description": "bench",
                    "original_url": f"{base}/{path.name}",
                    "local_path": f"f{i}.bin",
                    "expected_sha256": digest,
                }
                for i, (path, digest) in enumerate(files)
            ],
        )
        listing = root / "aria2.txt"
        listing.write_text(
            "".join(
                f"{base}/{path.name}\n  out=f{i}.bin\n  checksum=sha-256={digest}\n"
                for i, (path, digest) in enumerate(files)
            )
        )
        out = root / "aria2"
        aria = [
            aria2c,
            "-q",
            "-j",
            str(args.files),
            "--allow-overwrite=true",
            "--file-allocation=none",
            "-d",
            str(out),
            "-i",
            str(listing),
        ]
        results = alternate(
            args.runs,
            {
                "aria2c -j8": lambda: timed(aria),
                "dsm (8 workers)": lambda: fresh_dsm_run(
                    root / "home", catalog, "--all", DSM_WORKERS=str(args.files)
                ),
            },
        )
    print(f"{args.files} files of {args.size_mib} MiB from nginx on 127.0.0.1; {machine()}")
    print(table(results, "aria2c -j8"))


if __name__ == "__main__":
    main()
