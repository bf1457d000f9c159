"""The store: atomic writes under SIGKILL, no lost updates between processes, corrupt files."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
import pytest

from dsm.domain.jobs import Job, JobType
from dsm.domain.model import Dataset, Status
from dsm.repository import Repository
from dsm.store import Store, StoreCorrupt, StoreError
from dsm.store.storage import CHUNK_ROWS, encode
from dsm.tui.state import DashboardState
from tests.conftest import CatalogFn, run_dsm

ROOT = Path(__file__).resolve().parents[2]


def writer(path: str, seed: int, report: Connection) -> None:
    """Commit forever, sending the number of each write once it is on disk.

    Payload sizes vary a lot, so a torn or truncated file could not pass for a whole one.
    """
    store = Store(Path(path))
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        with store.transaction():
            pad = "x" * rng.randrange(1, 300_000)
            store.put("datasets", "w", {"name": "w", "n": n, "pad": pad})
            store.put("jobs", f"j{n % 7}", {"n": n})
        report.send(n)


def spin(seconds: float) -> None:
    """Let a random sliver of time pass (choosing the kill moment; nothing waits on it)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.slow
def test_sigkill_during_writes_never_leaves_a_broken_file(tmp_path: Path) -> None:
    # Forked writers start in milliseconds (the store is already imported), so many trials
    # fit in a few seconds; each is still a separate process that dies by SIGKILL.
    fork = multiprocessing.get_context("fork")
    rng = random.Random()
    trials = 40
    for trial in range(trials):
        db = tmp_path / f"t{trial}" / "db.json"
        db.parent.mkdir()
        receive, send = fork.Pipe(duplex=False)
        proc = fork.Process(target=writer, args=(str(db), rng.randrange(1 << 30), send))
        proc.start()
        send.close()
        try:
            # Kill after a random number of committed writes, at a random moment of the
            # next write cycle (a few ms: read, update, serialise, write, fsync, rename).
            committed = 0
            for _ in range(rng.randrange(1, 6)):
                assert receive.poll(10), "writer stopped writing"
                committed = receive.recv()
            spin(rng.uniform(0, 0.004))
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
        finally:
            proc.kill()
            proc.join()
            receive.close()
        assert proc.exitcode == -signal.SIGKILL
        data = json.loads(db.read_bytes())  # the whole point: it always parses
        assert set(data) == {"datasets", "jobs"}
        n = data["datasets"]["w"]["n"]
        assert n >= committed  # what was reported written was on disk
        assert len(data["datasets"]["w"]["pad"]) >= 1
        # The store opens and writes again at once: no stale lock, and the dead writer's
        # temp file (if the kill hit one) is swept by the next transaction.
        store = Store(db)
        store.put("datasets", "after", {"name": "after"})
        assert store.get("datasets", "w") == data["datasets"]["w"]
        assert [p.name for p in db.parent.iterdir() if p.name.endswith(".tmp")] == []


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Two processes each add to their own dataset's counter, in read-modify-write transactions,
# and each also inserts rows of its own. A transaction working from a stale copy of the file
# would drop the other process's latest changes.
INCREMENTER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from dsm.store import Store
    db, name, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    store = Store(db)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not go.exists():  # start together
        assert time.monotonic() < deadline
    for i in range(count):
        with store.transaction():
            doc = store.get("datasets", name)
            assert doc is not None
            store.put("datasets", name, {**doc, "size": doc["size"] + 1})
        store.put("jobs", f"{name}-{i}", {"by": name, "i": i})
    """
)


def test_two_processes_never_lose_an_update(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    store = Store(db)
    repo = Repository(store)
    for name in ("alpha", "beta"):
        repo.save(Dataset(name=name, size=0))
    go = tmp_path / "go"
    count = 120
    procs = [spawn(INCREMENTER, str(db), name, str(count), str(go)) for name in ("alpha", "beta")]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        go.touch()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            p.kill()
            p.wait()
    fresh = Store(db)
    assert fresh.get("datasets", "alpha")["size"] == count  # type: ignore[index]
    assert fresh.get("datasets", "beta")["size"] == count  # type: ignore[index]
    jobs = fresh.all("jobs")
    assert len(jobs) == 2 * count
    assert {(j["by"], j["i"]) for j in jobs} == {
        (n, i) for n in ("alpha", "beta") for i in range(count)
    }
    # Every dataset row is still a dataset.
    assert {d.name for d in Repository(fresh).datasets()} == {"alpha", "beta"}


def test_a_transaction_starts_from_the_latest_file(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    first, second = Store(db), Store(db)
    first.put("datasets", "a", {"name": "a"})
    assert second.all("datasets") == [{"name": "a"}]  # second has read (and cached) the file
    first.put("datasets", "b", {"name": "b"})
    second.put("datasets", "c", {"name": "c"})
    assert sorted(d["name"] for d in Store(db).all("datasets")) == ["a", "b", "c"]
    # Reads outside a transaction also see the other store's writes.
    assert sorted(d["name"] for d in first.all("datasets")) == ["a", "b", "c"]


def test_a_parsed_row_is_reused_only_while_the_row_is_unchanged(tmp_path: Path) -> None:
    """Repository.dataset parses a row once per version of it: every kind of write (in this
    process, deferred, or by another process) is seen, and a caller's changes to what it got
    never reach the next reader."""
    db = tmp_path / "db.json"
    repo, other = Repository(Store(db)), Repository(Store(db))
    repo.save(Dataset(name="a", description="one", original_url="http://x/a", local_path="a"))
    first = repo.dataset("a")
    first.description = "changed by a caller, not saved"
    assert repo.dataset("a").description == "one"
    repo.change("a", description="two")
    assert repo.dataset("a").description == "two"
    with repo.transaction(defer=True):
        repo.change("a", description="three")
    assert repo.dataset("a").description == "three"
    repo.flush()
    other.change("a", description="four")
    assert repo.dataset("a").description == "four"
    job = Job(JobType.DOWNLOAD, "a", {"dataset": "a"})
    repo.save_job(job)
    repo.change("a", download_job_id=job.id)
    job.progress = 42.0
    repo.write_progress([job])  # an update in place of the row's fields
    assert repo.dataset("a").download_progress == 42.0


def test_writes_happen_once_per_transaction_and_only_when_something_changed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db.json"
    store = Store(db)
    with store.transaction():
        for i in range(5):
            store.put("datasets", f"d{i}", {"name": f"d{i}"})
        assert not db.exists()  # nothing reaches the file before the end
    stamp = (db.stat().st_ino, db.stat().st_mtime_ns)
    with store.transaction():
        store.all("datasets")
    assert not store.update("datasets", "missing", {"x": 1})
    store.remove("datasets", "missing")
    assert (db.stat().st_ino, db.stat().st_mtime_ns) == stamp


def test_a_failed_transaction_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    store = Store(db)
    store.put("datasets", "a", {"name": "a", "size": 1})
    before = db.read_bytes()
    with pytest.raises(RuntimeError), store.transaction():
        store.update("datasets", "a", {"size": 2})
        store.put("datasets", "b", {"name": "b"})
        raise RuntimeError("boom")
    assert db.read_bytes() == before
    assert store.all("datasets") == [{"name": "a", "size": 1}]  # no half change in memory


def test_tables_and_keys_in_the_file(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    repo = Repository(Store(db))
    repo.save(Dataset(name="gsm8k"))
    job = Job(type=JobType.DOWNLOAD, dataset="gsm8k", params={"dataset": "gsm8k"})
    repo.save_job(job)
    data = json.loads(db.read_bytes())
    assert set(data) == {"datasets", "jobs"}
    assert list(data["datasets"]) == ["gsm8k"]  # keyed by name
    assert list(data["jobs"]) == [job.id]  # keyed by job id
    assert Repository(Store(db)).job(job.id) == job


@pytest.mark.parametrize("count", [0, 1, CHUNK_ROWS, 2 * CHUNK_ROWS + 1])
def test_written_in_pieces_byte_for_byte_as_whole(tmp_path: Path, count: int) -> None:
    """The file is written a piece at a time, and is exactly what one orjson.dumps of the
    tables writes (the format of every earlier dsm: nothing to migrate)."""
    db = tmp_path / "db.json"
    store = Store(db)
    rows = {
        f"d{i}": {"name": f"d{i}", "n": i, "url": "http://h/ä", "l": [1.5]} for i in range(count)
    }
    store.put_many("datasets", rows)
    store.put_many("jobs", {})  # nothing to put: no write, no table
    store.put("meta", "catalog", {"sha256": "x"})
    data = (
        {"datasets": rows, "meta": {"catalog": {"sha256": "x"}}}
        if count
        else {"meta": {"catalog": {"sha256": "x"}}}
    )
    assert db.read_bytes() == orjson.dumps(data)
    assert b"".join(encode({"a": {}, "b": rows})) == orjson.dumps({"a": {}, "b": rows})
    assert Store(db).all("datasets") == list(rows.values())


def test_a_store_cut_short_is_corrupt(home: Path, catalog: CatalogFn) -> None:
    """A file that lost its end after a whole document (copied short, a disk fault) is
    reported as corrupt, not read as fewer rows."""
    db = home / "db.json"
    store = Store(db)
    store.put_many("datasets", {f"d{i}": {"name": f"d{i}"} for i in range(50)})
    content = db.read_bytes()
    cut = content[: content.index(b"},", len(content) // 2) + 2]  # ends after a whole row
    check_corrupt(home, catalog, ["list", "--json"], cut, "not valid JSON")


def test_leftover_temp_files_are_swept(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    stale = tmp_path / ".db-k1ll3d.tmp"
    stale.write_text('{"datasets": {"half')
    other = tmp_path / "keep.tmp"
    other.write_text("not ours")
    Store(db).put("datasets", "a", {"name": "a"})
    assert not stale.exists()
    assert other.exists()


def test_an_unwritable_home_is_a_store_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permissions: make the folder a file's child instead
        db = tmp_path / "file" / "db.json"
        (tmp_path / "file").write_text("")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        db = locked / "db.json"
    with pytest.raises(StoreError, match=f"{db}: cannot "):
        Store(db).put("datasets", "a", {"name": "a"})


# -- a corrupt db.json is reported and never overwritten ------------------------------------
def _job(**fields: object) -> bytes:
    """A store with one waiting job `j` of a dead process, with `fields` changed."""
    job: dict[str, object] = {
        "id": "j",
        "type": "download",
        "status": "waiting",
        "dataset": "a",
        "owner": "gone",
    }
    job |= {"params": {"dataset": "a", "force_download": False}, "created_ms": 1} | fields
    return json.dumps({"datasets": {"a": {"name": "a"}}, "jobs": {"j": job}}).encode()


def _listed(key: str, item: object) -> bytes:
    """A store with one downloaded dataset `a` whose nested list `key` (its `manifest`, its
    `files`) holds a good item, then `item`."""
    good = {
        "manifest": {"path": "x", "url": "http://h/x", "size": 1, "sha256": "0" * 64},
        "files": {"url": "http://h/x", "path": "x", "expected_size": 1, "expected_sha256": "0"},
    }[key]
    row = {"name": "a", "status": "downloaded", "downloaded": True, key: [good, item]}
    return json.dumps({"datasets": {"a": row}}).encode()


CORRUPT: list[tuple[str, bytes, str]] = [
    ("not-json", b"this is not json\n", "not valid JSON"),
    ("empty", b"", "empty file (no tables): not a dsm store"),
    ("blank", b" \n\n", "empty file (no tables): not a dsm store"),
    ("truncated", b'{"datasets": {"gsm8k": {"name": "gs', "not valid JSON"),
    ("not-utf8", b'{"datasets": {"caf\xe9": {}}}', "not valid JSON"),
    ("a-list", b"[]", "expected a JSON object of tables, found list"),
    ("a-number", b"42", "expected a JSON object of tables, found int"),
    ("table-a-list", b'{"datasets": []}', "table 'datasets' is not an object of documents"),
    ("row-not-object", b'{"datasets": {"a": 5}}', "table 'datasets' is not an object"),
    ("row-no-name", b'{"datasets": {"a": {"size": 1}}}', "dataset row without a string 'name'"),
    # Rows are found by key and act by name: a row under another name is not that dataset.
    ("row-other-name", b'{"datasets": {"a": {"name": "b"}}}', "dataset row 'a' is named 'b'"),
    (
        "bad-status",
        b'{"datasets": {"a": {"name": "a", "status": "done"}}}',
        "dataset a: unknown status 'done'",
    ),
    ("job-row-no-id", b'{"jobs": {"j": {"dataset": "a"}}}', "job row without a string 'id'"),
    ("job-row-no-type", b'{"jobs": {"j": {"id": "j", "dataset": "a"}}}', "job j: unknown type"),
    (
        "job-row-bad-type",
        b'{"jobs": {"j": {"id": "j", "type": "fetch", "status": "waiting", "dataset": "a"}}}',
        "malformed job row: job j: unknown type 'fetch'",
    ),
    (
        "job-row-no-params",
        b'{"jobs": {"j": {"id": "j", "type": "download", "status": "waiting", "dataset": "a"}}}',
        "malformed job row: job j: field 'params' is missing",
    ),
    (
        "job-row-bad-status",
        b'{"jobs": {"j": {"id": "j", "type": "download", "status": "done", "dataset": "a"}}}',
        "malformed job row: job j: unknown status 'done'",
    ),
    # A job row of another shape (written by hand, by another program): named at open, where
    # it was an internal error once a process adopted the job or pruned the jobs.
    ("job-bad-params", _job(params="x"), "job j: field 'params' is 'x', expected an object"),
    ("job-bad-force", _job(params={"force_download": 1}), "job j: params.force_download is 1"),
    ("job-bad-stamp", _job(created_ms="soon"), "job j: field 'created_ms' is 'soon', expected"),
    ("job-float-stamp", _job(created_ms=1e30), "job j: field 'created_ms' is 1e+30, expected"),
    ("job-bad-dataset", _job(dataset=5), "job j: field 'dataset' is 5, expected a string"),
    ("job-bad-expect", _job(expect=[1]), "job j: field 'expect' is [1], expected an object or"),
    ("job-bad-owner", _job(owner=5), "job j: field 'owner' is 5, expected a string or null"),
    ("job-other-id", _job(id="k"), "job row 'j' has the id 'k'"),
    ("job-bad-keys", _job(idempotency_keys=5), "job j: field 'idempotency_keys' is neither"),
    ("job-bad-request", _job(idempotency_keys={"k": 1}), "field 'idempotency_keys' is neither"),
    # A row's nested list of another shape: named at open (was a KeyError or TypeError in
    # dsm show and at every job's start-up: the whole run an internal error).
    ("manifest-item-not-object", _listed("manifest", 1), "dataset a: manifest[1] is 1, expected"),
    (
        "manifest-item-no-size",
        _listed("manifest", {"path": "y", "url": "http://h/y"}),
        "dataset a: manifest[1] has no field 'size'",
    ),
    (
        "manifest-item-bad-size",
        _listed("manifest", {"path": "y", "url": "http://h/y", "size": "1 KB"}),
        "dataset a: manifest[1]: field 'size' is '1 KB', expected an integer",
    ),
    (
        "files-item-no-url",
        _listed("files", {"path": "y", "expected_size": 1, "expected_sha256": "0"}),
        "dataset a: files[1] has no field 'url'",
    ),
    (
        "files-item-bad-path",
        _listed("files", {"url": "u", "path": 5, "expected_size": 1, "expected_sha256": "0"}),
        "dataset a: files[1]: field 'path' is 5, expected a string",
    ),
    # A row leading out of the home (edited by hand; no dsm stores one): named at open,
    # where every job of it failed naming a path the catalogue does not give.
    (
        "row-local-path-outside",
        b'{"datasets": {"a": {"name": "a", "local_path": "data/../../etc/passwd"}}}',
        "dataset a: field 'local_path' 'data/../../etc/passwd' must not contain '..'",
    ),
    (
        "row-local-path-absolute",
        b'{"datasets": {"a": {"name": "a", "local_path": "/etc/passwd"}}}',
        "dataset a: field 'local_path' '/etc/passwd' must be relative to the data home",
    ),
    (
        "bad-field-type",
        b'{"datasets": {"a": {"name": "a", "size": "12 MB"}}}',
        "dataset a: field 'size' is '12 MB', expected an integer or null",
    ),
]


@pytest.mark.parametrize(
    ("content", "problem"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT]
)
def test_corrupt_store_exits_2_and_is_left_alone(
    home: Path, catalog: CatalogFn, content: bytes, problem: str
) -> None:
    check_corrupt(home, catalog, ["list", "--json"], content, problem)


def test_corrupt_store_on_show_and_run_job(home: Path, catalog: CatalogFn) -> None:
    content, problem = CORRUPT[-1][1:]
    check_corrupt(home, catalog, ["show", "good"], content, problem)
    check_corrupt(home, catalog, ["--run-job", "download", "--all"], content, problem)


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-store", "dangling"])
def test_a_store_that_is_a_link_is_refused_and_left_alone(
    home: Path, tmp_path: Path, catalog: CatalogFn, dangling: bool
) -> None:
    """db.json a link (the store moved to another disk): every write replaced the link by a
    file, silently, leaving the store it named stale; a dangling one (that disk not
    mounted) began a new, empty store in its place."""
    cat = catalog(good="http://127.0.0.1:9/good")
    assert run_dsm("list", home=home, catalog_path=cat).returncode == 0
    elsewhere = tmp_path / "elsewhere.json"
    (home / "db.json").rename(elsewhere)
    before = elsewhere.read_bytes()
    if dangling:
        elsewhere.unlink()
    (home / "db.json").symlink_to(elsewhere)
    for command in (["list"], ["--run-job", "delete", "--all"]):
        result = run_dsm(*command, home=home, catalog_path=cat)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"dsm: error: {home / 'db.json'}: a symbolic link (to ")
        assert (home / "db.json").is_symlink()
    assert dangling or elsewhere.read_bytes() == before


def check_corrupt(
    home: Path, catalog: CatalogFn, command: list[str], content: bytes, problem: str
) -> None:
    db = home / "db.json"
    db.write_bytes(content)
    os.utime(db, ns=(1_000_000_000, 1_000_000_000))
    path = catalog(good="http://127.0.0.1:9/good")
    result = run_dsm(*command, home=home, catalog_path=path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"dsm: error: {db}: ")
    assert problem in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert db.read_bytes() == content
    assert db.stat().st_mtime_ns == 1_000_000_000
    assert sorted(p.name for p in home.iterdir() if p.name != "db.json.lock") == ["db.json"]


def test_corrupt_store_is_reported_before_a_bad_catalogue(home: Path, tmp_path: Path) -> None:
    """Both broken: the store is named (it is checked first) and neither file changes."""
    db = home / "db.json"
    db.write_bytes(b"{broken")
    bad = tmp_path / "c.json"
    bad.write_text("{also broken")
    result = run_dsm("list", home=home, catalog_path=bad)
    assert result.returncode == 2
    assert str(db) in result.stderr
    assert db.read_bytes() == b"{broken"


def test_store_corrupt_from_the_api(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    db.write_bytes(b"[1, 2]")
    store = Store(db)
    with pytest.raises(StoreCorrupt, match="found list"):
        store.check()
    with pytest.raises(StoreCorrupt):
        store.put("datasets", "a", {"name": "a"})
    assert db.read_bytes() == b"[1, 2]"


def test_empty_file_is_a_corrupt_store(tmp_path: Path) -> None:
    """dsm never writes an empty db.json: one that is empty lost its rows, it is not new."""
    db = tmp_path / "db.json"
    db.write_bytes(b"")
    store = Store(db)
    with pytest.raises(StoreCorrupt, match="empty file"):
        store.all("datasets")
    with pytest.raises(StoreCorrupt, match="empty file"):
        store.put("datasets", "a", {"name": "a"})
    assert db.read_bytes() == b""


def test_lock_is_released_when_a_holder_dies(tmp_path: Path) -> None:
    """A process killed inside a transaction does not block the next one."""
    db = tmp_path / "db.json"
    Store(db).put("datasets", "a", {"name": "a"})
    holder = spawn(
        textwrap.dedent(
            """
            import sys, time
            from pathlib import Path
            from dsm.store import Store
            s = Store(Path(sys.argv[1]))
            with s.transaction():
                s.put("datasets", "b", {"name": "b"})
                print("inside", flush=True)
                sys.stdin.read()
            """
        ),
        str(db),
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "inside\n"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
        assert holder.stderr is not None
        holder.stderr.close()
    store = Store(db)
    store.put("datasets", "c", {"name": "c"})  # gets the lock at once
    assert sorted(d["name"] for d in store.all("datasets")) == ["a", "c"]


def test_store_reads_are_safe_against_a_writer_thread(tmp_path: Path) -> None:
    """A read in one thread never iterates tables a transaction in another thread changes."""
    store = Store(tmp_path / "db.json")
    store.put_many("jobs", {str(i): {"id": str(i), "n": i} for i in range(3000)})
    errors: list[BaseException] = []
    reads: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                reads.append(len(store.all("jobs")))
            except BaseException as exc:
                errors.append(exc)
                stop.set()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # threads interleave often: without the fix it fails in ~10 ms
    thread = threading.Thread(target=reader)
    thread.start()
    deadline = time.monotonic() + 1.0
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            key = uuid.uuid4().hex
            store.put("jobs", key, {"id": key})
            store.remove("jobs", key)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert not errors, f"reader failed: {errors[0]!r}"
    assert reads and set(reads) <= {3000, 3001}


def test_a_commit_queued_behind_a_lock_wait_keeps_the_short_delay(
    home: Path, catalog: CatalogFn
) -> None:
    """The deferred changes hold db.json.lock until the next commit, COMMIT_SHARE times the
    last write later. Measured from the queue, a commit behind a store call that waited for
    another process's lock made that hold several times the wait: under contention one
    process then kept the lock past the others' 30 s timeout, failing their jobs. Only the
    write itself counts."""
    import anyio

    from dsm.engine.ledger import Ledger
    from dsm.engine.storethread import COMMIT_DELAY
    from tests.enginehelp import setup

    settings, repo = setup(home, catalog(a="http://127.0.0.1:9/a"))
    ledger = Ledger(settings, repo, "owner")
    waiting, released = threading.Event(), threading.Event()

    def wait_for_the_lock() -> None:  # as a store call blocked on another process's lock
        waiting.set()
        released.wait(10)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ledger.call, wait_for_the_lock)
            await anyio.to_thread.run_sync(waiting.wait)
            threading.Timer(1.0, released.set).start()
            await ledger.commit()  # queued behind it for a second

    anyio.run(main)
    assert ledger._delay == COMMIT_DELAY


def _lock_is_free(path: Path) -> bool:
    """Whether another open file (another process, to flock) could take the lock now."""
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # and with it the lock, if taken
    return True


def test_a_terminal_stop_lets_go_of_the_store_first(
    home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-Z on a `--run-job` stopped it at once: when deferred changes held db.json.lock,
    every other dsm process on the home waited for it, then failed at the 30 s timeout
    ("another dsm process holds the lock"). Now the changes are written and the lock let go
    before the process stops itself."""
    import anyio

    from dsm.engine.engine import Engine
    from tests.enginehelp import setup

    settings, repo = setup(home, catalog(a="http://127.0.0.1:9/a"))
    stops: list[tuple[int, bool]] = []
    kill = os.kill

    async def main() -> None:
        stopped = anyio.Event()

        def stop(pid: int, sig: int) -> None:  # the test process must not stop: noted instead
            if sig != signal.SIGSTOP:
                return kill(pid, sig)
            stops.append((sig, _lock_is_free(home / "db.json.lock")))
            stopped.set()  # called on the event loop, by the signal's handler

        monkeypatch.setattr(os, "kill", stop)
        async with Engine(settings, repo, []).running() as engine:
            await engine.ledger.defer(repo.set_catalog_stamp, {"held": True})
            assert repo.pending and not _lock_is_free(home / "db.json.lock")
            signal.raise_signal(signal.SIGTSTP)
            with anyio.fail_after(10):
                await stopped.wait()

    # Ignored unless dsm handles it: a stop that dsm let through must not stop the tests.
    before = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    try:
        anyio.run(main)
    finally:
        signal.signal(signal.SIGTSTP, before)
    assert stops == [(signal.SIGSTOP, True)]
    assert Repository(Store(home / "db.json")).catalog_stamp() == {"held": True}


def test_a_write_after_the_lock_file_was_deleted_never_overwrites_another(tmp_path: Path) -> None:
    """db.json.lock deleted while a process held it (a user clearing 'stale' locks after
    'another dsm process holds the lock'): the next process made a new lock file and wrote;
    the holder then laid its older tables over that write, losing it. Now the holder's
    write is refused and the other's stays."""
    db = tmp_path / "db.json"
    holder, other = Store(db), Store(db)
    holder.put("datasets", "a", {"name": "a"})
    with holder.transaction(defer=True):
        holder.put("datasets", "b", {"name": "b"})  # deferred: the lock stays held
    (tmp_path / "db.json.lock").unlink()
    other.put("datasets", "c", {"name": "c"})  # a new lock file: nothing stops it
    with pytest.raises(StoreError, match="another process wrote it while this one held"):
        holder.flush()
    assert sorted(json.loads(db.read_bytes())["datasets"]) == ["a", "c"]
    assert not list(tmp_path.glob(".db-*.tmp"))
    holder.put("datasets", "b", {"name": "b"})  # the next transaction starts from the file
    assert sorted(json.loads(db.read_bytes())["datasets"]) == ["a", "b", "c"]


def test_a_row_changed_after_the_clock_was_set_back_is_still_the_newer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock set back (by hand, by NTP) while a download runs: the row's end is
    stamped later than its start all the same. A dashboard keeps the later of two reads of a
    row by that stamp: it showed `downloading 79%` for the hour the clock had gone back."""
    clock = [1_796_000_000_000]
    monkeypatch.setattr("dsm.repository.now_ms", lambda: clock[0])
    db = tmp_path / "db.json"
    writer = Repository(Store(db))
    writer.save(Dataset("a"))
    writer.change("a", Status.QUEUED)
    writer.change("a", Status.DOWNLOADING)
    shown = DashboardState(own_engine="me")
    shown.apply_snapshot(Repository(Store(db)).datasets(), [])
    clock[0] -= 3_600_000
    writer.change("a", Status.DOWNLOADED, downloaded=True)
    assert shown.apply_snapshot(Repository(Store(db)).datasets(), []).names == {"a"}
    assert shown.datasets["a"].status == Status.DOWNLOADED
