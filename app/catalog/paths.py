"""Keeping every dataset file inside the data home."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath

from dsm.domain.relpath import local_path_problem

# Names dsm itself keeps in the home: a dataset file must never take their place (the API
# token of dsm.api.auth, the crash log of dsm.crashlog too: a download there would give
# `dsm serve` a token the server chose). Compared case-folded: on a case-insensitive file
# system (macOS, Windows) `DB.json` is the store.
STORE_FILES = frozenset({"db.json", "db.json.lock", "api-token", "dsm-error.log"})
LOCK_DIR = ".locks"
ARCHIVES_DIR = ".archives"  # verified archives of unpacked datasets, and their file lists
OWN_DIRS = (LOCK_DIR, ARCHIVES_DIR)
# Partial downloads, their sidecars, and an unpacked copy on its way in or out.
PART_SUFFIXES = (".part", ".part.json", ".part.old")


def reserved_problem(relative: str) -> str | None:
    """Why a path (relative to the home, normalised: no `.`, `//` or trailing `/`) belongs
    to dsm itself, or None."""
    relative = relative.casefold()
    name = relative.rpartition("/")[2]
    if relative in STORE_FILES or relative.partition("/")[0] in OWN_DIRS:
        return (
            "is reserved for dsm's own files (db.json, db.json.lock, api-token, "
            "dsm-error.log, .locks/, .archives/)"
        )
    if name.startswith(".db-") and name.endswith(".tmp"):
        return "is reserved for dsm's own temporary files (.db-*.tmp)"
    if name.endswith(PART_SUFFIXES):
        return "must not end in .part, .part.json or .part.old (names of partial downloads)"
    return None


def member_problem(relative: str) -> str | None:
    """Why a file of a dataset of several files (a catalogue `files` path, a Hub repo path)
    may not go to `relative` below the dataset's folder, or None."""
    return local_path_problem(relative, "the dataset's folder") or reserved_problem(
        str(PurePosixPath(relative))
    )


def resolved_home(home: Path) -> Path:
    """The home with its symlinks followed, once per process once it exists (a job asks for
    it on the event loop, and it cost a few lstats each time): what a home points at is
    settled when dsm starts using it. The folders and files under it are resolved on every
    pass."""
    absolute = home.absolute()  # the key: the cwd may change
    settled = _SETTLED.get(absolute)
    if settled is None:
        made = os.path.isdir(absolute)  # not made yet (a catalogue checked first): not settled
        settled = absolute.resolve()
        if made:
            _SETTLED[absolute] = settled
    return settled


_SETTLED: dict[Path, Path] = {}  # the homes of this process, resolved


class Resolver:
    """Resolves `local_path`s under one home, following symlinks, refusing escapes.

    Each folder and each path are resolved once per instance (a catalogue of 10,000 entries
    shares a few folders, and a pass may ask for a path twice); make a new one for each
    pass, since symlinks can change later (the home itself: `resolved_home`).
    Paths are handled as strings (os.path.realpath is what Path.resolve calls): this runs
    for every job, and pathlib's objects cost more than the checks.
    """

    def __init__(self, home: Path) -> None:
        self.root = resolved_home(home)
        self._inside = os.path.join(str(self.root), "")  # the root and a separator
        self._folders: dict[str, str] = {"": str(self.root)}  # a path at the top: the root
        self._texts: dict[str, str] = {}  # a pass asks for a path more than once
        self._paths: dict[str, Path] = {}

    def __call__(self, local_path: str) -> Path:
        """The absolute path of `local_path` under the home, after following symlinks.

        Raises ValueError when it is not a plain relative path, resolves outside the home or
        would take the place of one of dsm's own files.
        """
        path = self._paths.get(local_path)
        if path is None:
            path = self._paths[local_path] = Path(self.text(local_path))
        return path

    def text(self, local_path: str) -> str:
        """`self(local_path)` as a string: for a pass that only stats the file, building the
        Path cost more than the check."""
        known = self._texts.get(local_path)
        if known is not None:
            return known
        problem = local_path_problem(local_path)
        if problem:
            raise ValueError(f"local_path {local_path!r} {problem}")
        # As PurePosixPath reads it (`a//b`, `./a`, `a/.`): the name is never `.` or empty.
        parent, _, name = posixpath.normpath(local_path).rpartition("/")
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
        reserved = reserved_problem(target[len(self._inside) :])  # realpath: normalised
        if reserved:
            raise ValueError(f"local_path {local_path!r} {reserved}")
        self._texts[local_path] = target
        return target


def resolve_inside(home: Path, local_path: str) -> Path:
    """One path under `home`, resolved now (see Resolver)."""
    return Resolver(home)(local_path)
