"""bench/download: one large file, dsm against curl, wget, aria2c and the Python peers pooch and
huggingface_hub, alternated runs.

    python -m bench.download [--size-mib 1024] [--runs 5] [--only dsm,curl -o,...]
                             [--before /work/main]

dsm's run includes the SHA-256 check against `expected_sha256`, fsync and the atomic rename.
The bound (issue 17) is the slower of `curl -o` (the disk) and `sha256 in memory` (the hash
alone, in a fresh interpreter): dsm should take at most 1.15x that.

pooch and huggingface_hub are optional (`pip install -e '.[bench]'`); a peer that is not
installed is skipped with a message.

`curl -o + fsync` is curl followed by `sync FILE` (an fsync of that file), and `disk alone` writes
the size from memory with an fdatasync every 64 MiB on a second thread, as dsm does: what the disk
takes to make the bytes durable, which dsm does and `curl -o` does not. The second bound line
adds the disk alone to the bound. `--before CHECKOUT` adds the
rows "dsm, before" and "dsm single stream, before", run from a copy of that checkout's sources
put first on PYTHONPATH (main's, to measure a change).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
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
    sources_copy,
    table,
    timed,
    write_catalog,
)

BOUND_TARGET = 1.15

# The hash alone: SHA-256 over `size` bytes already in memory, 4 MiB at a time.
SHA_IN_MEMORY = """
import hashlib, sys
size, block = int(sys.argv[1]), bytes(4 << 20)
h = hashlib.sha256()
for _ in range(size // len(block)):
    h.update(block)
h.update(block[: size % len(block)])
"""

# The disk alone: `size` bytes from memory made durable, the writeback overlapped as dsm's is.
DISK_ALONE = """
import os, sys, threading
size, out, block = int(sys.argv[1]), sys.argv[2], os.urandom(4 << 20)
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
wake, done = threading.Event(), []
def sync():
    while wake.wait() and not done:
        wake.clear()
        os.fdatasync(fd)
syncer = threading.Thread(target=sync)
syncer.start()
written = 0
while written < size:
    written += os.write(fd, block[: size - written])
    if written % (64 << 20) == 0:
        wake.set()
done.append(True)
wake.set()
syncer.join()
os.fdatasync(fd)
"""

# pooch's documented way to fetch a file and check its hash.
POOCH = """
import pathlib, sys, pooch
url, digest, out = sys.argv[1:4]
out = pathlib.Path(out)
pooch.retrieve(url, known_hash="sha256:" + digest, fname=out.name, path=out.parent,
               progressbar=False)
"""

# huggingface_hub's streaming download of a plain URL into a temporary file, then what a
# caller does to trust it: hash it, fsync, rename (hf_hub_download's own steps for a file).
HF = """
import hashlib, os, sys, tempfile
from huggingface_hub.file_download import http_get
url, digest, out = sys.argv[1:4]
with tempfile.NamedTemporaryFile(dir=os.path.dirname(out), delete=False) as fh:
    http_get(url, fh)
    fh.flush()
    os.fsync(fh.fileno())
h = hashlib.sha256()
with open(fh.name, "rb") as f:
    while block := f.read(4 << 20):
        h.update(block)
if h.hexdigest() != digest:
    sys.exit("hash mismatch")
os.replace(fh.name, out)
"""


def python_peer(module: str | None, script: str, *args: str) -> Callable[[], Sample] | None:
    """A peer run as `python -c script args` in a fresh interpreter; None (with a message)
    when the module it needs is not installed."""
    if module is not None and importlib.util.find_spec(module) is None:
        print(
            f"bench: {module} is not installed, skipping its row "
            "(pip install -e '.[bench]' adds the optional peers)",
            file=sys.stderr,
        )
        return None
    return partial(timed, [sys.executable, "-c", script, *args])


def bound_line(results: dict[str, list[Sample]]) -> str:
    """dsm's time against the slower of the disk (curl -o) and the hash (sha256 in memory)."""

    def median(name: str) -> float:
        return statistics.median(s.wall for s in results[name])

    dsm_rows = ("dsm", "dsm single stream", "dsm, before", "dsm single stream, before")
    bound = max(median("curl -o"), median("sha256 in memory"))
    lines = [f"bound: the slower of curl -o and sha256 in memory = {bound:.2f} s"]
    for name in (n for n in dsm_rows if n in results):
        ratio = median(name) / bound
        verdict = "met" if ratio <= BOUND_TARGET else "missed"
        lines.append(f"{name}: {ratio:.2f}x the bound (target {BOUND_TARGET}x: {verdict})")
    if "disk alone" in results:
        durable = max(bound, median("disk alone"))
        lines.append(f"durable bound: the slower of that and the disk alone = {durable:.2f} s")
        lines += [
            f"{name}: {median(name) / durable:.2f}x the durable bound"
            for name in dsm_rows
            if name in results
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", help="comma-separated rows to run (curl -o and sha256 always run)")
    ap.add_argument("--before", type=Path, help="a checkout whose dsm runs the 'before' rows")
    args = ap.parse_args()
    curl, wget, aria2c = need("curl", "curl"), need("wget", "wget"), need("aria2c", "aria2")
    size = args.size_mib << 20
    src, digest = random_file(f"single-{args.size_mib}m.bin", size)
    with nginx(src.parent) as base, tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        url = f"{base}/{src.name}"
        out = Path(work) / "out.bin"
        entry = {
            "name": "big",
            "description": "bench",
            "original_url": url,
            "local_path": "big.bin",
            "expected_size": size,
            "expected_sha256": digest,
        }
        catalog = write_catalog(Path(work) / "catalog.json", [entry])

        def fresh(run: Callable[[], Sample]) -> Callable[[], Sample]:
            def go() -> Sample:
                out.unlink(missing_ok=True)  # every tool writes the whole file every time
                return run()

            return go

        home = Path(work) / "home"
        synced = 'curl -s -o "$1" "$2" && sync "$1"'  # coreutils' sync FILE fsyncs that file
        tools: dict[str, Callable[[], Sample] | None] = {
            "curl -o": partial(timed, [curl, "-s", "-o", str(out), url]),
            "curl -o + fsync": partial(timed, ["sh", "-c", synced, "sh", str(out), url]),
            "sha256 in memory": python_peer(None, SHA_IN_MEMORY, str(size)),
            "disk alone": python_peer(None, DISK_ALONE, str(size), str(out)),
            "wget -O": partial(timed, [wget, "-q", "-O", str(out), url]),
            "aria2c": partial(
                timed,
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
                ],
            ),
            "pooch": python_peer("pooch", POOCH, url, digest, str(out)),
            "huggingface_hub": python_peer("huggingface_hub", HF, url, digest, str(out)),
            "dsm": partial(fresh_dsm_run, home, catalog, "--all"),
            "dsm single stream": partial(fresh_dsm_run, home, catalog, "--all", DSM_SEGMENTS="1"),
        }
        if args.before is not None:
            old = str(sources_copy(args.before, Path(work) / "before"))
            tools["dsm, before"] = partial(fresh_dsm_run, home, catalog, "--all", PYTHONPATH=old)
            tools["dsm single stream, before"] = partial(
                fresh_dsm_run, home, catalog, "--all", DSM_SEGMENTS="1", PYTHONPATH=old
            )
        wanted = set(args.only.split(",")) if args.only else set(tools)
        if args.only and args.before is not None:
            wanted |= {f"{name}, before" for name in wanted}
        wanted |= {"curl -o", "sha256 in memory"}
        runnable = {
            name: fresh(run) for name, run in tools.items() if run is not None and name in wanted
        }
        results = alternate(args.runs, runnable)
    print(f"1 file of {args.size_mib} MiB from nginx on 127.0.0.1 to disk; {machine()}")
    print(table(results, "curl -o"))
    print(bound_line(results))


if __name__ == "__main__":
    main()
