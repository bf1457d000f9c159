"""bench/segmented: one file from a server that caps every connection (nginx limit_rate),
dsm with 4 segments against `curl -o` and `aria2c -x4 -s4`; then the same file uncapped,
segmented against single-stream dsm.

    python -m bench.segmented [--size-mib 512] [--rate 20m] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
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


def measure(src: Path, digest: str, cap: str | None, root: Path, runs: int) -> None:
    """One table: capped (dsm segmented, curl, aria2c) or uncapped (segmented vs single)."""
    curl, aria2c = need("curl", "curl"), need("aria2c", "aria2")
    out = root / "out.bin"
    with nginx(src.parent, rate_per_connection=cap) as base:
        url = f"{base}/{src.name}"
        entry: dict[str, object] = {
            "name": "big",
            "description": "bench",
            "original_url": url,
            "local_path": "big.bin",
            "expected_sha256": digest,
        }
        catalog = write_catalog(root / "catalog.json", [entry])
        home = root / "home"
        tools = {
            "dsm 4 segments": partial(
                fresh_dsm_run,
                home,
                catalog,
                "--all",
                DSM_SEGMENTS="4",
                DSM_SEGMENT_MIN=str(64 << 20),
            )
        }
        if cap:
            tools["curl -o"] = partial(timed, [curl, "-s", "-o", str(out), url])
            tools["aria2c -x4 -s4"] = partial(
                timed,
                [
                    aria2c,
                    "-q",
                    "-x4",
                    "-s4",
                    "--allow-overwrite=true",
                    "--file-allocation=none",
                    "-d",
                    str(root),
                    "-o",
                    "out.bin",
                    url,
                ],
            )
        else:
            tools["dsm single stream"] = partial(
                fresh_dsm_run, home, catalog, "--all", DSM_SEGMENTS="1"
            )
        results = alternate(runs, tools)
    where = f"capped at {cap} per connection" if cap else "uncapped"
    size_mib = src.stat().st_size >> 20
    print(f"\n1 file of {size_mib} MiB from nginx on 127.0.0.1, {where}; {machine()}")
    print(table(results, "curl -o" if cap else "dsm single stream"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rate", default="20m", help="nginx limit_rate per connection")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    src, digest = random_file(f"single-{args.size_mib}m.bin", args.size_mib << 20)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        measure(src, digest, args.rate, Path(work), args.runs)
        measure(src, digest, None, Path(work), args.runs)


if __name__ == "__main__":
    main()
