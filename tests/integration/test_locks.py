"""The cross-process dataset locks (dsm.engine.locks.LockFile), on real files and processes:
the OFD byte locks of one shared file, and the `flock` per file of platforms without them."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dsm.domain.jobs import JobType
from dsm.domain.model import Status
from dsm.engine import locks
from dsm.engine.locks import LockFile
from tests.conftest import CatalogFn, blob
from tests.httpserver import FileServer

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
    here = LockFile(tmp_path, ofd)
    try:
        assert child.stdout.readline().strip() == "held"
        assert here.try_lock("gsm8k") is None
    finally:
        child.kill()
        child.wait(10)
    taken = here.try_lock("gsm8k")
    assert taken is not None
    taken.release()
    here.close()


FORK_THEN_LOCK = """
import os, sys, time
from pathlib import Path
from dsm.engine.locks import LockFile
holder = LockFile(Path(sys.argv[1]))
first = holder.try_lock("before")
ready, tell = os.pipe()
if os.fork() == 0:  # a child forked while the engine runs (a multiprocessing pool)
    os.write(tell, b"x")  # fork() has returned here: the at-fork close has run
    time.sleep(60)
    os._exit(0)
os.read(ready, 1)
later = holder.try_lock("after")
print("held" if first and later else "refused", flush=True)
sys.stdin.read()
"""


def test_a_forked_child_keeps_no_lock_alive_after_its_parent(tmp_path: Path) -> None:
    """The parent dies (kill -9) while a child it forked lives on: the locks the parent took
    before and after the fork are free; the child's copy of the shared file held none."""
    parent = subprocess.Popen(
        [sys.executable, "-c", FORK_THEN_LOCK, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the child too is killed at the end, by its group
    )
    assert parent.stdout is not None
    other = LockFile(tmp_path)
    try:
        assert parent.stdout.readline().strip() == "held"
        assert other.try_lock("after") is None
        parent.kill()
        parent.wait(10)
        for name in ("before", "after"):
            assert other.try_lock(name) is not None, name
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        other.close()


def test_a_file_system_without_ofd_locks_falls_back_to_a_file_per_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some NFS and FUSE mounts refuse OFD locks (EINVAL, ENOLCK): the holder takes a flock
    on the dataset's own file instead, which other holders there respect."""

    def refused(fd: int, cmd: int, arg: bytes) -> bytes:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "fcntl", refused)
    holder = LockFile(tmp_path)
    held = holder.try_lock("gsm8k")
    assert held is not None and not holder.ofd
    assert (tmp_path / "gsm8k.lock").exists()
    assert LockFile(tmp_path, ofd=False).try_lock("gsm8k") is None
    held.release()
    assert LockFile(tmp_path, ofd=False).try_lock("gsm8k") is not None


def test_a_lock_released_after_its_file_was_closed_frees_nothing_newer(tmp_path: Path) -> None:
    holder, other = LockFile(tmp_path, ofd=True), LockFile(tmp_path, ofd=True)
    stale = holder.try_lock("gsm8k")
    assert stale is not None
    holder.close()  # lets go of every lock
    fresh = holder.try_lock("gsm8k")  # the file opened again, the byte locked again
    assert fresh is not None
    stale.release()  # names the earlier opening: no effect
    assert other.try_lock("gsm8k") is None
    fresh.release()
    assert other.try_lock("gsm8k") is not None


def test_locks_of_a_running_engine_survive_their_folder_being_cleared(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """`rm -rf .locks` while a download ran (clearing 'stale' locks): another process took
    the engine for a dead one and adopted its running job, and could lock its dataset on a
    new file: the download ran twice at once into one partial. Within a second the engine
    makes its lock files again and holds them."""
    import shutil
    import threading

    import anyio

    from dsm.engine.engine import Engine
    from dsm.engine.ledger import Ledger
    from tests.enginehelp import setup, until

    gate = threading.Event()
    cat = catalog(a=server.add("a.bin", blob(1, 10_000)))
    server.fault("a.bin", gate=gate)
    settings, repo = setup(home, cat)
    other = Ledger(settings, repo, "another-process")

    async def main() -> None:
        async with Engine(settings, repo, []).running() as engine:
            await engine.submit(JobType.DOWNLOAD, {"dataset": "a"})
            await until(lambda: bool(server.requests("a.bin")))  # running, lock held
            shutil.rmtree(settings.lock_dir)
            await until(lambda: (settings.lock_dir / "datasets.lock").exists())
            await until(lambda: any(settings.lock_dir.glob("owner-*.lock")))
            assert other.owner_alive(engine.owner, {})
            stranger = LockFile(settings.lock_dir)
            assert stranger.try_lock("a") is None
            stranger.close()
            gate.set()
            await engine.wait_idle()

    anyio.run(main)
    assert repo.dataset("a").status == Status.DOWNLOADED
    assert len(server.requests("a.bin")) == 1


def test_a_process_stopped_while_its_locks_were_cleared_leaves_its_job_to_the_taker(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """`kill -STOP` on a downloading `--run-job`, `rm -rf .locks`, another `--run-job`: the
    second takes the first for dead (its lock files are gone), adopts its job and locks the
    dataset on a new lock file. At `kill -CONT` the first found the dataset taken, said so
    and held on: both downloaded into one partial, one renamed it away under the other
    (`internal error: FileNotFoundError`), both recorded the one job. Now the first stops
    its job at once and records nothing of it: the job is the taker's."""
    from filelock import FileLock

    from tests.conftest import dsm_command, dsm_env, wait_for

    data = blob(44, 200_000)
    cat = catalog(a=server.add("a.bin", data))
    first_gate, second_gate = threading.Event(), threading.Event()
    server.fault("a.bin", gate=first_gate)
    server.fault("a.bin", gate=second_gate)
    cmd = [*dsm_command(), "--run-job", "download", "--all"]
    env = dsm_env(home, cat, DSM_STALL_TIMEOUT="60")  # the gated requests are no stall
    procs = []
    try:
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
        wait_for(lambda: len(server.requests("a.bin")) == 1, timeout=30)
        with FileLock(str(home / "db.json.lock")).acquire(timeout=30):  # stopped outside it
            procs[0].send_signal(signal.SIGSTOP)
        shutil.rmtree(home / ".locks")
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
        wait_for(lambda: len(server.requests("a.bin")) == 2, timeout=30)  # adopted, locked
        procs[0].send_signal(signal.SIGCONT)
        _, first_err = procs[0].communicate(timeout=30)  # its request still unanswered
        assert procs[0].returncode == 1, first_err
        assert "another dsm process took over a" in first_err
        stored = json.loads((home / "db.json").read_text())
        (job,) = stored["jobs"].values()
        assert job["status"] == "running", job  # the taker's, not overwritten
        assert stored["datasets"]["a"]["status"] == "downloading"
        second_gate.set()
        _, second_err = procs[1].communicate(timeout=30)
        assert procs[1].returncode == 0, second_err
    finally:
        first_gate.set()
        second_gate.set()
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert (home / "data" / "a").read_bytes() == data
    assert not (home / "dsm-error.log").exists()
