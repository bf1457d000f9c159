"""Keeping every dataset file inside the data home."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def local_path_problem(local_path: str) -> str | None:
    """Why `local_path` may not be used as a path under the home, or None when it is fine."""
    if not local_path or not local_path.strip():
        return "must not be empty"
    pure = PurePosixPath(local_path.replace("\\", "/"))
    if pure.is_absolute() or local_path.startswith("~") or ":" in pure.parts[0]:
        return "must be relative to the data home"
    if ".." in pure.parts:
        return "must not contain '..'"
    if local_path.endswith("/") or pure.name in ("", "."):
        return "must name a file"
    return None


def resolve_inside(home: Path, local_path: str) -> Path:
    """The absolute path of `local_path` under `home`, after following symlinks.

    Raises ValueError when it is not a plain relative path or resolves outside the home.
    """
    problem = local_path_problem(local_path)
    if problem:
        raise ValueError(f"local_path {local_path!r} {problem}")
    root = home.resolve()
    target = (root / local_path).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ValueError(f"local_path {local_path!r} resolves outside the data home {root}")
    return target
