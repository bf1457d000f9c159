"""What a stored row cannot say by itself, asked now without loading the engine (`dsm list`,
`dsm show` and the dashboard stay light): whether the engine that owns a job still runs (a
live engine holds `owner-<id>.lock` under the home's `.locks/`, flock, for as long as it
runs: engine.OwnerLock), and whether a recorded copy is still on disk."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dsm.catalog.paths import Resolver
from dsm.domain.model import Dataset


def owner_lock_path(lock_dir: Path, owner: str) -> Path:
    """The file a live engine holds locked; a free lock means its owner died."""
    return lock_dir / f"owner-{owner}.lock"


def owner_running(lock_dir: Path, owner: str) -> bool:
    """Whether the engine `owner` holds its lock: False when the file is gone or free (its
    process died); True when held, or when the lock cannot be asked (never calls a live
    engine dead). Creates nothing. A probe asks for a shared lock, which only the engine's
    exclusive one refuses: probes never hold each other off (an exclusive probe of a dead
    owner, as `dsm list` makes, had an engine starting then count it live and leave its
    jobs for its next start; a grace to ask again cost every live owner's probe its wait)."""
    try:
        fd = os.open(owner_lock_path(lock_dir, owner), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # held (EWOULDBLOCK), or no locks here: either way not known dead
        return True
    finally:
        os.close(fd)  # with the lock this probe took
    return False


MISSING = "missing on disk"  # the recorded copy was removed
CHANGED = "changed on disk"  # another size or mtime than when it was verified


def copy_seen(resolver: Resolver, ds: Dataset) -> str:
    """What the disk says of the copy the row records, by a stat: MISSING, CHANGED (a file
    edited, truncated or touched by hand: the engine no longer counts it verified either,
    files.still_verified), or "" (as recorded, as far as a stat tells). dsm records its own
    changes; a local_path the catalogue no longer allows is said elsewhere."""
    if not ds.downloaded:
        return ""
    try:
        path = resolver.text(ds.local_path)
        st = os.stat(path)
    except ValueError:
        return ""
    except FileNotFoundError:  # a link there is followed (Resolver): one to nothing too
        return MISSING
    except OSError:  # not ours to judge (a permission): a verify says
        return ""
    # A tree (unpacked, Hub, `files`) is a folder: its files are checked by a verify.
    single = ds.extract is None and ds.manifest is None and ds.file_mtime_ns is not None
    if single and (st.st_size, st.st_mtime_ns) != (ds.size, ds.file_mtime_ns):
        return CHANGED
    return ""
