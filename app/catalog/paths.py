"""Keeping every dataset file inside the data home."""

from __future__ import annotations

import functools
import os
from pathlib import Path, PurePath, PurePosixPath

# Names dsm itself keeps in the home: a dataset file must never take their place.
STORE_FILES = frozenset({"db.json", "db.json.lock"})
LOCK_DIR = ".locks"
ARCHIVES_DIR = ".archives"  # verified archives of unpacked datasets, and their file lists
OWN_DIRS = (LOCK_DIR, ARCHIVES_DIR)
# Partial downloads, their sidecars, and an unpacked copy on its way in or out.
PART_SUFFIXES = (".part", ".part.json", ".part.old")
# A file name may take 255 bytes on common file systems; the longest name dsm writes beside
# a dataset file is its sidecar's temporary file, `<name>.part.json.tmp`.
NAME_MAX = 255 - len(".part.json.tmp")


@functools.lru_cache(maxsize=1024)  # pure; asked again by each job, a few times in a row
def local_path_problem(local_path: str, base: str = "the data home") -> str | None:
    """Why `local_path` may not be used as a path under `base`, or None when it is fine."""
    if not local_path or not local_path.strip():
        return "must not be empty"
    pure = PurePosixPath(local_path.replace("\\", "/"))
    if not pure.parts:  # "." and "./" name the home itself
        return "must name a file"
    if pure.is_absolute() or local_path.startswith("~") or ":" in pure.parts[0]:
        return f"must be relative to {base}"
    if ".." in pure.parts:
        return "must not contain '..'"
    if local_path.endswith("/") or pure.name in ("", "."):
        return "must name a file"
    long = next((p for p in pure.parts if len(p.encode()) > NAME_MAX), None)
    if long is not None:
        return (
            f"has a name of {len(long.encode())} bytes ({long[:20]}...); at most {NAME_MAX} "
            "(file systems allow 255, and dsm adds .part.json.tmp beside the file)"
        )
    return None


def reserved_problem(relative: PurePath) -> str | None:
    """Why a path (relative to the home) belongs to dsm itself, or None."""
    name = relative.name
    if str(relative) in STORE_FILES or (relative.parts and relative.parts[0] in OWN_DIRS):
        return "is reserved for dsm's own files (db.json, db.json.lock, .locks/, .archives/)"
    if name.startswith(".db-") and name.endswith(".tmp"):
        return "is reserved for dsm's own temporary files (.db-*.tmp)"
    if name.endswith(PART_SUFFIXES):
        return "must not end in .part, .part.json or .part.old (names of partial downloads)"
    return None


def member_problem(relative: str) -> str | None:
    """Why a file of a dataset of several files (a catalogue `files` path, a Hub repo path)
    may not go to `relative` below the dataset's folder, or None."""
    return local_path_problem(relative, "the dataset's folder") or reserved_problem(
        PurePosixPath(relative)
    )


class Resolver:
    """Resolves `local_path`s under one home, following symlinks, refusing escapes.

    The home and each folder are resolved once per instance (a catalogue of 10,000 entries
    shares a few folders); make a new one for each pass, since symlinks can change later.
    Paths are handled as strings (os.path.realpath is what Path.resolve calls): this runs
    for every job, and pathlib's objects cost more than the checks.
    """

    def __init__(self, home: Path) -> None:
        self.root = home.resolve()
        self._inside = os.path.join(str(self.root), "")  # the root and a separator
        self._folders: dict[str, str] = {}

    def __call__(self, local_path: str) -> Path:
        """The absolute path of `local_path` under the home, after following symlinks.

        Raises ValueError when it is not a plain relative path, resolves outside the home or
        would take the place of one of dsm's own files.
        """
        problem = local_path_problem(local_path)
        if problem:
            raise ValueError(f"local_path {local_path!r} {problem}")
        parent, name = _split(local_path)
        folder = self._folders.get(parent)
        if folder is None:
            folder = self._folders[parent] = os.path.realpath(os.path.join(self._inside, parent))
        target = os.path.join(folder, name)
        if os.path.islink(target):
            target = os.path.realpath(target)
        if not target.startswith(self._inside):  # outside, or the home itself
            raise ValueError(
                f"local_path {local_path!r} resolves outside the data home {self.root}"
            )
        reserved = _reserved(target[len(self._inside) :])
        if reserved:
            raise ValueError(f"local_path {local_path!r} {reserved}")
        return Path(target)


@functools.lru_cache(maxsize=1024)
def _split(local_path: str) -> tuple[str, str]:
    """A local_path's folder and name, as PurePosixPath reads them (`a//b`, `./a`)."""
    rel = PurePosixPath(local_path)
    return str(rel.parent), rel.name


@functools.lru_cache(maxsize=1024)
def _reserved(relative: str) -> str | None:
    return reserved_problem(PurePosixPath(relative))


def resolve_inside(home: Path, local_path: str) -> Path:
    """One path under `home`, resolved now (see Resolver)."""
    return Resolver(home)(local_path)
