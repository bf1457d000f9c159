"""The rules every relative path dsm keeps must meet (a catalogue local_path, a member of a
dataset's folder, a stored row's): pure, so the store's row check at open uses them too."""

from __future__ import annotations

import functools
import re
from pathlib import PurePosixPath

# Levels a dataset's path may go down (catalogue, Hub listing, archive member): Python's tree
# walks (shutil.rmtree, os.walk) recurse once per folder, so a tree 1,000 deep could be
# written but never removed (a RecursionError).
MAX_DEPTH = 256

# A file name may take 255 bytes on common file systems; the longest name dsm writes beside
# a dataset file is its sidecar's temporary file, `<name>.part.json.tmp`.
NAME_MAX = 255 - len(".part.json.tmp")
# Relative paths of plain ASCII names, none led by a dot: the common case, checked at once.
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # names with these are refused everywhere


@functools.lru_cache(maxsize=1024)  # pure; asked again by each job, a few times in a row
def local_path_problem(local_path: str, base: str = "the data home") -> str | None:
    """Why `local_path` may not be used as a path under `base`, or None when it is fine."""
    parts = local_path.split("/")
    if len(parts) > MAX_DEPTH:
        return f"must not go more than {MAX_DEPTH} levels deep"
    if _PLAIN.fullmatch(local_path) and all(len(p) <= NAME_MAX for p in parts):
        return None  # plain ASCII names break no rule below (each needs `.`, `~`, `:`, `/`...)
    if not local_path or not local_path.strip():
        return "must not be empty"
    if CONTROL.search(local_path):  # NUL fails every file call; an escape rewrites a terminal
        return "must not hold control characters (NUL, line breaks, escapes)"
    pure = PurePosixPath(local_path.replace("\\", "/"))
    if not pure.parts:  # "." and "./" name the home itself
        return "must name a file"
    escape = escape_problem(local_path, base)
    if escape:
        return escape
    if local_path.endswith("/") or pure.name in ("", "."):
        return "must name a file"
    long = next((p for p in pure.parts if len(p.encode()) > NAME_MAX), None)
    if long is not None:
        return (
            f"has a name of {len(long.encode())} bytes ({long[:20]}...); at most {NAME_MAX} "
            "(file systems allow 255, and dsm adds .part.json.tmp beside the file)"
        )
    return None


def escape_problem(local_path: str, base: str = "the data home") -> str | None:
    """Why `local_path` leads out of `base` (absolute, `~`, a drive, `..`), or None: the rule
    every dsm has held paths to (the others came later), so a stored row breaking it was
    written by another hand."""
    if _PLAIN.fullmatch(local_path):
        return None
    pure = PurePosixPath(local_path.replace("\\", "/"))
    if pure.is_absolute() or local_path.startswith("~") or ":" in (pure.parts or ("",))[0]:
        return f"must be relative to {base}"
    if ".." in pure.parts:
        return "must not contain '..'"
    return None
