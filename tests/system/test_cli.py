"""The query commands through the installed `dsm` console script, in subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsm.version import __version__
from tests.conftest import TEST_ENV, CatalogFn, dsm_command, dsm_env, run_dsm, start_dsm, wait_for
from tests.httpserver import FileServer
from tests.unit.test_model import CATALOGUE_FIELDS, EXTRA_FIELDS, SEED_COLUMNS

NAMES = ["golf", "alpha", "echo", "charlie", "bravo", "foxtrot", "delta"]  # 7, not sorted
PAGE_KEYS = {"page_size", "page_number", "total", "datasets"}
DATASET_KEYS = SEED_COLUMNS | CATALOGUE_FIELDS | EXTRA_FIELDS  # every stored field


@pytest.fixture
def seven(catalog: CatalogFn) -> Path:
    return catalog(**{n: f"http://127.0.0.1:9/{n}" for n in NAMES})


def list_json(home: Path, cat: Path, *args: str) -> dict[str, Any]:
    result = run_dsm("list", "--json", *args, home=home, catalog_path=cat)
    assert result.returncode == 0, result.stderr
    page: dict[str, Any] = json.loads(result.stdout)
    return page


def test_list_pages(home: Path, seven: Path) -> None:
    seen: list[str] = []
    for number, size in [(1, 3), (2, 3), (3, 1)]:
        page = list_json(home, seven, "--page-size", "3", "--page", str(number))
        assert set(page) == PAGE_KEYS
        assert (page["page_size"], page["page_number"], page["total"]) == (3, number, 7)
        assert len(page["datasets"]) == size
        for row in page["datasets"]:
            assert set(row) == DATASET_KEYS
        seen += [row["name"] for row in page["datasets"]]
    assert seen == sorted(NAMES)  # sorted by name, every dataset once


def test_page_past_the_end_is_an_empty_list(home: Path, seven: Path) -> None:
    for args in (["--page", "4", "--page-size", "3"], ["--page", "2"], ["--page", "1000000"]):
        page = list_json(home, seven, *args)
        assert page["datasets"] == []
        assert page["total"] == 7


def test_list_defaults_and_limits(home: Path, seven: Path) -> None:
    page = list_json(home, seven)
    assert (page["page_size"], page["page_number"], page["total"]) == (50, 1, 7)
    assert len(page["datasets"]) == 7
    assert len(list_json(home, seven, "--page-size", "1")["datasets"]) == 1
    assert len(list_json(home, seven, "--page-size", "1000")["datasets"]) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--page-size", "0"], "--page-size must be between 1 and 1000, got 0"),
        (["--page-size", "1001"], "--page-size must be between 1 and 1000, got 1001"),
        (["--page-size", "-5"], "--page-size must be between 1 and 1000, got -5"),
        (["--page", "0"], "--page must be at least 1, got 0"),
        (["--page", "-2"], "--page must be at least 1, got -2"),
        (["--page", "two"], "argument --page: invalid int value: 'two'"),
        (["--page-size", "1.5"], "argument --page-size: invalid int value: '1.5'"),
        (["--json", "--page", "0"], "--page must be at least 1, got 0"),
    ],
)
def test_list_out_of_range_exits_2(home: Path, seven: Path, args: list[str], message: str) -> None:
    result = run_dsm("list", *args, home=home, catalog_path=seven)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_list_table(home: Path, seven: Path) -> None:
    result = run_dsm("list", "--page-size", "3", "--page", "2", home=home, catalog_path=seven)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "SIZE", "PROGRESS", "DOWNLOADED"]
    assert [line.split()[0] for line in lines[1:4]] == ["delta", "echo", "foxtrot"]
    assert "not loaded" in lines[1]
    assert lines[-1] == "page 2, 3 of 7 datasets"
    empty = run_dsm("list", "--page", "9", home=home, catalog_path=seven)
    assert empty.returncode == 0
    assert empty.stdout.splitlines()[-1] == "page 9, 0 of 7 datasets"


def test_show(home: Path, seven: Path) -> None:
    result = run_dsm("show", "echo", "--json", home=home, catalog_path=seven)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert set(row) == DATASET_KEYS
    assert row["name"] == "echo"
    assert row["original_url"] == "http://127.0.0.1:9/echo"
    assert row["local_path"] == "data/echo"
    assert row["status"] == "not_loaded" and row["downloaded"] is False
    text = run_dsm("show", "echo", home=home, catalog_path=seven)
    assert text.returncode == 0
    fields = {line.split()[0]: line.split(None, 1)[1] for line in text.stdout.splitlines()}
    assert set(fields) == DATASET_KEYS
    assert fields["name"] == "echo" and fields["status"] == "not_loaded"
    assert fields["checksum"] == "-"


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_show_unknown(home: Path, seven: Path, extra: list[str]) -> None:
    result = run_dsm("show", "zulu", *extra, home=home, catalog_path=seven)
    assert result.returncode == 2
    assert "dataset not found: zulu" in result.stderr
    assert result.stdout == ""


def check_schema(schema: dict[str, Any]) -> None:
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["dataset"]
    assert set(schema["properties"]) == {"dataset", "force_download"}
    assert schema["properties"]["dataset"]["type"] == "string"
    force = schema["properties"]["force_download"]
    assert force["type"] == "boolean"
    assert force["default"] is False


def test_job_params_schema(tmp_path: Path) -> None:
    # No home or catalogue is needed, and none is created.
    home = tmp_path / "never"
    result = run_dsm("job-params", "--json", home=home)
    assert result.returncode == 0, result.stderr
    check_schema(json.loads(result.stdout))
    plain = run_dsm("job-params", home=home)
    assert plain.returncode == 0
    assert json.loads(plain.stdout) == json.loads(result.stdout)
    assert not home.exists()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    return {**env, **TEST_ENV, **extra}


def dsm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dsm_command(), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_global_options_before_or_after_the_command(home: Path, seven: Path) -> None:
    h, c = str(home), str(seven)
    env = clean_env()
    variants = [
        ["--home", h, "--catalog", c, "list", "--json"],
        ["list", "--json", "--home", h, "--catalog", c],
        ["--json", "--home", h, "list", "--catalog", c],
        ["--catalog", c, "list", "--page-size", "50", "--home", h, "--json"],
    ]
    outputs = []
    for args in variants:
        result = dsm(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        outputs.append(json.loads(result.stdout))
    assert all(o == outputs[0] for o in outputs)
    assert outputs[0]["total"] == 7
    for args in (
        ["--home", h, "--catalog", c, "show", "delta", "--json"],
        ["show", "--json", "delta", "--catalog", c, "--home", h],
    ):
        result = dsm(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["name"] == "delta"


def test_flags_win_over_the_environment(home: Path, seven: Path, tmp_path: Path) -> None:
    other_home = tmp_path / "other-home"
    env = clean_env(DSM_HOME=str(other_home), DSM_CATALOG=str(tmp_path / "missing.json"))
    result = dsm("list", "--json", "--home", str(home), "--catalog", str(seven), env=env)
    assert result.returncode == 0, result.stderr
    assert (home / "db.json").exists()
    assert not other_home.exists()
    # And the environment alone is used when no flag is given.
    env = clean_env(DSM_HOME=str(other_home), DSM_CATALOG=str(seven))
    assert dsm("list", env=env).returncode == 0
    assert (other_home / "db.json").exists()


def test_default_home_is_the_user_data_dir(tmp_path: Path, seven: Path) -> None:
    data = tmp_path / "xdg-data"
    env = clean_env(DSM_CATALOG=str(seven), XDG_DATA_HOME=str(data), HOME=str(tmp_path))
    result = dsm("list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert (data / "dsm" / "db.json").exists()


def test_bundled_catalogue_is_the_default(tmp_path: Path) -> None:
    env = clean_env(DSM_HOME=str(tmp_path / "h"))
    result = dsm("list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    names = {d["name"] for d in json.loads(result.stdout)["datasets"]}
    assert {"humaneval", "mbpp", "gsm8k", "mmlu"} <= names


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {"DSM_WORKERS": "many"}, "DSM_WORKERS='many' is not a valid number"),
        ([], {"DSM_MAX_RETRIES": "-1"}, "DSM_MAX_RETRIES='-1' must be at least 0"),
        ([], {"DSM_RETRY_DELAY": "soon"}, "DSM_RETRY_DELAY='soon' is not a valid number"),
        ([], {"DSM_JOB_TIMEOUT": "0"}, "DSM_JOB_TIMEOUT='0' must be at least 0.001"),
        ([], {"DSM_STALL_TIMEOUT": "x"}, "DSM_STALL_TIMEOUT='x' is not a valid number"),
        (["--workers", "0"], {}, "--workers='0' must be at least 1"),
        ([], {"DSM_HEADERS": "no-equals-sign"}, "DSM_HEADERS entry 'no-equals-sign'"),
    ],
)
def test_bad_settings_exit_2(
    home: Path, seven: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = dsm("list", *args, env=clean_env(DSM_HOME=str(home), DSM_CATALOG=str(seven), **env))
    assert result.returncode == 2
    assert message in result.stderr
    assert not (home / "db.json").exists()


def test_home_that_is_a_file_exits_2(tmp_path: Path, seven: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for home in (blocker, blocker / "below"):
        result = run_dsm("list", home=home, catalog_path=seven)
        assert result.returncode == 2
        assert f"data home {home} is not a directory" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_failed_job_exits_1(home: Path, catalog: CatalogFn, server: FileServer) -> None:
    cat = catalog(gone=server.url("gone.bin"))  # the server answers 404
    result = run_dsm("--run-job", "download", "--dataset", "gone", home=home, catalog_path=cat)
    assert result.returncode == 1, result.stderr
    assert "gone" in result.stderr


def test_version_and_python_m_app(home: Path, seven: Path) -> None:
    result = run_dsm("--version", home=home)
    assert result.returncode == 0
    assert result.stdout.strip() == f"dsm {__version__}"
    env = clean_env(DSM_HOME=str(home), DSM_CATALOG=str(seven))
    by_module = subprocess.run(
        [sys.executable, "-m", "dsm", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert by_module.returncode == 0, by_module.stderr
    assert json.loads(by_module.stdout) == list_json(home, seven)


def test_unknown_command_or_option_exits_2(home: Path, seven: Path) -> None:
    for args in (["frobnicate"], ["list", "--colour"], ["show"]):
        result = run_dsm(*args, home=home, catalog_path=seven)
        assert result.returncode == 2, args
        assert "usage: dsm" in result.stderr


def test_the_installed_console_script_is_used() -> None:
    command = dsm_command()
    assert Path(command[0]).name == "dsm", command  # not the `python -m dsm` fallback


# -- options that would be silently ignored, and numbers that are not numbers, are errors


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["list"], {"DSM_RETRY_DELAY": "nan"}, "DSM_RETRY_DELAY='nan' must be a finite number"),
        (["list", "--job-timeout", "inf"], {}, "--job-timeout='inf' must be a finite number"),
        (["--dataset", "a"], {}, "--dataset: only with --run-job"),
        (["list", "--force-download"], {}, "--force-download: only with --run-job"),
        (["list", "--run-job", "download"], {}, "cannot be combined with the 'list' command"),
        (["--run-job", "download", "--all", "--dataset", "a"], {}, "takes one of --dataset"),
        ([], {}, "the dashboard needs a terminal"),  # stdin/stdout are pipes here
    ],
)
def test_rejected_with_exit_2(
    args: list[str], env: dict[str, str], message: str, home: Path, catalog: CatalogFn
) -> None:
    cat = catalog(a="http://127.0.0.1:9/a")
    proc = run_dsm(*args, home=home, catalog_path=cat, env=env)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (home / "data").exists()


def test_unknown_top_level_field_in_the_catalogue(home: Path, tmp_path: Path) -> None:
    cat = tmp_path / "c.json"
    cat.write_text(json.dumps({"datasets": [], "dataset": []}))
    proc = run_dsm("list", home=home, catalog_path=cat)
    assert proc.returncode == 2
    assert f"{cat}: unknown top-level field 'dataset'" in proc.stderr


# What drives a terminal (ESC, the C1 CSI U+009B, a bidi override), as UTF-8 bytes.
HOSTILE_TEXT = "red \x1b[31m csi \x9b2J rtl \u202etxt kept: é 日本"
RAW = [c.encode() for c in ("\x1b", "\x9b", "\u202e")]


def printed(home: Path, cat: Path, *args: str, **env: str) -> bytes:
    """What `dsm ARGS` prints on stdout, as the bytes a terminal would receive."""
    done = subprocess.run(
        [*dsm_command(), *args], env=dsm_env(home, cat, **env), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_catalogue_text_cannot_drive_the_terminal(home: Path, catalog: CatalogFn) -> None:
    """A description with raw escapes: the JSON printed decodes to the same text, the plain
    output shows escapes, and no raw control byte reaches the terminal either way."""
    url = "http://127.0.0.1:9/x"
    entry = {"name": "x", "description": HOSTILE_TEXT, "original_url": url, "local_path": "x"}
    cat = catalog([entry])
    page = printed(home, cat, "list", "--json")
    shown = printed(home, cat, "show", "x", "--json")
    plain = printed(home, cat, "show", "x")
    for out in (page, shown, plain):
        assert not [raw for raw in RAW if raw in out], out
    assert json.loads(page)["datasets"][0]["description"] == HOSTILE_TEXT
    assert json.loads(shown)["description"] == HOSTILE_TEXT
    assert "é 日本".encode() in shown  # readable, not every non-ASCII letter escaped
    assert rb"red \x1b[31m csi \x9b2J rtl \u202etxt" in plain
    # A terminal that takes ASCII only (was an internal error at the first letter beyond):
    # JSON escapes every other character, plain text shows escapes.
    narrow = printed(home, cat, "list", "--json", PYTHONIOENCODING="ascii")
    assert narrow.isascii() and json.loads(narrow)["datasets"][0]["description"] == HOSTILE_TEXT
    assert rb"kept: \xe9 \u65e5\u672c" in printed(home, cat, "show", "x", PYTHONIOENCODING="ascii")


def _line_of(home: Path, cat: Path, name: str) -> str:
    result = run_dsm("list", home=home, catalog_path=cat)
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if line.split()[0] == name)


def test_list_and_show_say_what_is_seen_now(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The stored row is the last word of the process that wrote it: a killed download's
    row said `downloading` until an engine started, a copy removed by hand `downloaded`.
    `list` and `show` look at the rows they show: a job no live process runs, a copy
    changed or gone."""
    server.add("a.bin", b"a" * 5000)
    server.add("b.bin", b"b" * 500_000)
    server.always("b.bin", stall_after=1000)  # b downloads until it is killed
    cat = catalog(a=server.url("a.bin"), b=server.url("b.bin"))
    assert (
        run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat).returncode
        == 0
    )
    proc = start_dsm("--run-job", "download", "--dataset", "b", home=home, catalog_path=cat)
    try:
        wait_for(lambda: "downloading" in _line_of(home, cat, "b"), timeout=30)
        assert "interrupted" not in _line_of(home, cat, "b")  # its process runs it
    finally:
        proc.kill()
        proc.wait()
        server.release.set()
    line = _line_of(home, cat, "b")
    assert "downloading" in line and line.endswith("(interrupted)")
    shown = run_dsm("show", "b", home=home, catalog_path=cat).stdout.splitlines()
    assert shown[-1].split(None, 2)[2].startswith("interrupted: no dsm process runs its job")
    assert not _line_of(home, cat, "a").endswith(")")
    (home / "data" / "a").write_bytes(b"a" * 4000)  # truncated by hand
    assert _line_of(home, cat, "a").endswith("(changed on disk)")
    shown = run_dsm("show", "a", home=home, catalog_path=cat).stdout.splitlines()
    assert shown[-1].split(None, 2)[2].startswith("changed on disk: another size or time")
    (home / "data" / "a").unlink()
    assert _line_of(home, cat, "a").endswith("(missing on disk)")
    assert list_json(home, cat)["datasets"][0]["downloaded"] is True  # JSON: the stored row


def test_a_commands_help_lists_only_what_it_takes(home: Path, seven: Path) -> None:
    """`dsm list -h` listed --run-job, --dataset, --params, ...: options that are an error
    there (`--dataset: only with --run-job`). The top-level help names the job types."""
    job_only = ("--run-job", "--dataset", "--force-download", "--params")

    def listed(text: str) -> set[str]:
        return {f for f in (*job_only, "--all") if re.search(rf"{f}\b(?!-)", text)}

    for command in (["list"], ["show"], ["job-params"], ["serve"], ["cache", "status"]):
        shown = run_dsm(*command, "-h", home=home, catalog_path=seven)
        assert shown.returncode == 0 and "--home DIR" in shown.stdout
        assert listed(shown.stdout) == set(), command
    push = run_dsm("cache", "push", "-h", home=home, catalog_path=seven).stdout
    assert listed(push) == {"--all"}
    top = run_dsm("-h", home=home, catalog_path=seven).stdout
    assert listed(top) == {*job_only, "--all"}
    assert "run jobs headless: download, update, delete, verify" in top
    refused = run_dsm("list", "--dataset", "x", home=home, catalog_path=seven)
    assert refused.returncode == 2 and "--dataset: only with --run-job" in refused.stderr
