"""bench/floor: the least a Python program with httpx does for a catalogue's files.

    python -m bench.floor CATALOG OUT_DIR [--threads N]

Each entry's URL is fetched with one shared `httpx.Client` on N threads, hashed as it comes,
written to `<name>.part`, fsynced, checked against its SHA-256 and renamed: what dsm does for
a plain file, without its engine, store, resume, events or checks. `bench.smallfiles` runs it
beside dsm and aria2c, so the distance from dsm to this floor (dsm's own cost) and from the
floor to aria2c (what Python and httpx cost on this machine) are measured in one script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from dsm.config import DEFAULT_WORKERS


def fetch_one(client: httpx.Client, out: Path, entry: dict[str, Any]) -> None:
    target = out / entry["local_path"]
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    with client.stream("GET", entry["original_url"]) as response, part.open("wb") as sink:
        response.raise_for_status()
        for chunk in response.iter_raw():
            digest.update(chunk)
            sink.write(chunk)
        sink.flush()
        os.fsync(sink.fileno())
    if digest.hexdigest() != entry["expected_sha256"]:
        sys.exit(f"floor: {entry['name']}: checksum mismatch")
    os.replace(part, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("catalog", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--threads", type=int, default=DEFAULT_WORKERS)
    args = ap.parse_args()
    entries = json.loads(args.catalog.read_text())["datasets"]
    args.out.mkdir(parents=True, exist_ok=True)
    with httpx.Client() as client, ThreadPoolExecutor(args.threads) as pool:
        # list(): a failure in any thread is raised here
        list(pool.map(lambda entry: fetch_one(client, args.out, entry), entries))


if __name__ == "__main__":
    main()
