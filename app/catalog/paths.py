"""Keeping every dataset file inside the data home."""

from __future__ import annotations

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


def local_path_problem(local_path: str, base: str = "the data home") -> str | None:
    """Why `local_path` may not be used as a path under `base`, or None when it is fine."""
    return _path_problem(local_path, PurePosixPath(local_path.replace("\\", "/")), base)


def _path_problem(local_path: str, pure: PurePosixPath, base: str) -> str | None:
    """local_path_problem, given `local_path` parsed with backslashes as separators."""
    if not local_path or not local_path.strip():
        return "must not be empty"
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
    return _reserved(relative.parts)


def _reserved(parts: tuple[str, ...]) -> str | None:
    name = parts[-1] if parts else ""
    if "/".join(parts) in STORE_FILES or (parts and parts[0] in OWN_DIRS):
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

    The home, each folder and each path are resolved once per instance (a catalogue of
    10,000 entries shares a few folders; a pass may ask for one path twice); make a new one
    for each pass, since symlinks can change later.
    """

    def __init__(self, home: Path) -> None:
        self.root = home.resolve()
        self._folders: dict[str, tuple[Path, PurePath | None]] = {}
        self._done: dict[str, Path] = {}

    def __call__(self, local_path: str) -> Path:
        """The absolute path of `local_path` under the home, after following symlinks.

        Raises ValueError when it is not a plain relative path, resolves outside the home or
        would take the place of one of dsm's own files.
        """
        done = self._done.get(local_path)
        if done is not None:
            return done
        rel = PurePosixPath(local_path)
        # Parsed once for both checks unless a backslash makes them differ (pathlib's
        # parsing was most of the cost of a pass over 10,000 datasets).
        pure = PurePosixPath(local_path.replace("\\", "/")) if "\\" in local_path else rel
        problem = _path_problem(local_path, pure, "the data home")
        if problem:
            raise ValueError(f"local_path {local_path!r} {problem}")
        folder, inside = self._folder(str(rel.parent))
        target = folder / rel.name
        root = self.root
        parts: tuple[str, ...] | None = None
        if target.is_symlink():
            target = target.resolve()
            if target.is_relative_to(root) and target != root:
                parts = target.relative_to(root).parts
        elif inside is not None:  # a plain name in a resolved folder: no pathlib walk again
            parts = (*inside.parts, rel.name)
        if parts is None:
            raise ValueError(f"local_path {local_path!r} resolves outside the data home {root}")
        reserved = _reserved(parts)
        if reserved:
            raise ValueError(f"local_path {local_path!r} {reserved}")
        self._done[local_path] = target
        return target

    def _folder(self, parent: str) -> tuple[Path, PurePath | None]:
        """A folder resolved, and its path relative to the home (None: outside it)."""
        found = self._folders.get(parent)
        if found is None:
            folder = (self.root / parent).resolve()
            inside = folder.relative_to(self.root) if folder.is_relative_to(self.root) else None
            found = self._folders[parent] = (folder, inside)
        return found


def resolve_inside(home: Path, local_path: str) -> Path:
    """One path under `home`, resolved now (see Resolver)."""
    return Resolver(home)(local_path)
