"""Whether the engine that owns a job still runs, asked without loading the engine (`dsm
list` and `dsm show` stay light): a live engine holds `owner-<id>.lock` under the home's
`.locks/` (flock) for as long as it runs (engine.OwnerLock)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def owner_lock_path(lock_dir: Path, owner: str) -> Path:
    """The file a live engine holds locked; a free lock means its owner died."""
    return lock_dir / f"owner-{owner}.lock"


def owner_running(lock_dir: Path, owner: str) -> bool:
    """Whether the engine `owner` holds its lock: False when the file is gone or free (its
    process died); True when held, or when the lock cannot be asked (never calls a live
    engine dead). Creates nothing, and holds a free lock only for an instant."""
    try:
        fd = os.open(owner_lock_path(lock_dir, owner), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held (EWOULDBLOCK), or no locks here: either way not known dead
        return True
    finally:
        os.close(fd)  # with the lock this probe took
    return False
