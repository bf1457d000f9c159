"""The cross-process dataset locks (dsm.engine.locks.LockFile), on real files and processes:
the OFD byte locks of one shared file, and the `flock` per file of platforms without them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dsm.engine import locks
from dsm.engine.locks import LockFile

BOTH = pytest.mark.parametrize("ofd", [True, False], ids=["ofd", "flock"])


@BOTH
def test_a_dataset_locked_by_one_holder_waits_for_its_release(tmp_path: Path, ofd: bool) -> None:
    one, other = LockFile(tmp_path, ofd), LockFile(tmp_path, ofd)
    held = one.try_lock("gsm8k")
    assert held is not None
    assert other.try_lock("gsm8k") is None
    beside = other.try_lock("mbpp")  # another dataset is free
    assert beside is not None
    held.release()
    again = other.try_lock("gsm8k")
    assert again is not None
    assert one.try_lock("gsm8k") is None
    for lock in (again, beside):
        lock.release()
    one.close()
    other.close()


def test_ofd_locks_leave_one_file_for_every_dataset(tmp_path: Path) -> None:
    holder = LockFile(tmp_path, ofd=True)
    held = [holder.try_lock(f"d{i}") for i in range(50)]
    assert all(lock is not None for lock in held)
    assert [p.name for p in tmp_path.iterdir()] == [locks.SHARED_NAME]
    holder.close()


def test_two_datasets_on_one_byte_keep_it_until_both_are_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hash collision: the byte stays locked while either of its datasets is held."""
    monkeypatch.setattr(locks, "dataset_byte", lambda name: 7)
    one, other = LockFile(tmp_path, ofd=True), LockFile(tmp_path, ofd=True)
    first, second = one.try_lock("a"), one.try_lock("b")
    assert first is not None and second is not None
    first.release()
    assert other.try_lock("b") is None
    second.release()
    assert other.try_lock("b") is not None
    one.close()
    other.close()


HOLD = """
import sys
from pathlib import Path
from dsm.engine.locks import LockFile
lock = LockFile(Path(sys.argv[1]), sys.argv[2] == "ofd").try_lock("gsm8k")
print("held" if lock else "refused", flush=True)
sys.stdin.read()
"""


@BOTH
def test_a_lock_held_by_another_process_ends_with_it(tmp_path: Path, ofd: bool) -> None:
    """Killed, the holder leaves no stale lock behind: the next process takes the dataset."""
    mode = "ofd" if ofd else "flock"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "held"
        here = LockFile(tmp_path, ofd)
        assert here.try_lock("gsm8k") is None
    finally:
        child.kill()
        child.wait(10)
    taken = here.try_lock("gsm8k")
    assert taken is not None
    taken.release()
    here.close()
