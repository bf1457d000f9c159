"""Import hygiene: the headless paths never load Textual (it costs start-up time and a terminal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dsm
from tests.conftest import TEST_ENV, CatalogFn
from tests.httpserver import FileServer

ROOT = Path(__file__).resolve().parents[2]

# Runs dsm's own entry point in a fresh interpreter, then reports what it imported.
PROBE = textwrap.dedent(
    """
    import json, sys
    from dsm.cli import main
    code = main(json.loads(sys.argv[1]))
    loaded = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
    ui = sorted(m for m in sys.modules if m.startswith(("dsm.tui", "dsm.widgets")))
    # Loaded only when used: archives, the team cache, httpx's command line.
    lazy = ("tarfile", "zipfile", "obstore", "click", "rich", "pygments", "dsm.engine.unpack")
    heavy = sorted(m for m in lazy if m in sys.modules)
    # The engine, httpx and anyio: only for commands that transfer (a query of the store
    # starts ~0.15 s sooner without them).
    engine = sorted(m for m in ("dsm.engine.engine", "httpx", "anyio") if m in sys.modules)
    report = {"code": code, "textual": loaded, "ui": ui, "heavy": heavy, "engine": engine}
    print(json.dumps(report), file=sys.stderr)
    """
)


def probe(args: list[str], home: Path, catalog_path: Path | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    env.update(TEST_ENV, DSM_HOME=str(home))
    if catalog_path is not None:
        env["DSM_CATALOG"] = str(catalog_path)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stderr.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--json", "--page-size", "1"],
        ["show", "alpha"],
        ["show", "alpha", "--json"],
        ["show", "missing"],
        ["job-params", "--json"],
    ],
    ids=" ".join,
)
def test_query_commands_load_no_textual(home: Path, catalog: CatalogFn, args: list[str]) -> None:
    report = probe(args, home, catalog(alpha="http://127.0.0.1:9/alpha"))
    assert report["code"] == (2 if "missing" in args else 0)
    assert report["textual"] == []
    assert report["ui"] == []
    assert report["engine"] == []  # no Hub dataset follows a branch: nothing to ask the Hub


def test_run_job_loads_no_textual(home: Path, catalog: CatalogFn, server: FileServer) -> None:
    body = b"question,answer\n1+1,2\n" * 100
    cat = catalog(alpha=server.add("alpha.csv", body))
    report = probe(["--run-job", "download", "--dataset", "alpha"], home, cat)
    assert report["code"] == 0
    assert report["textual"] == []
    assert report["ui"] == []
    assert report["heavy"] == []
    assert (home / "data" / "alpha").read_bytes() == body  # the job really ran
    assert len(server.requests("alpha.csv")) == 1


def test_engine_and_store_modules_import_no_textual() -> None:
    code = textwrap.dedent(
        """
        import sys
        import dsm.engine.engine, dsm.headless, dsm.cli, dsm.repository
        import dsm.catalog.sync, dsm.catalog.parse, dsm.api.app
        import dsm.store, dsm.store.db, dsm.store.storage
        bad = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
        assert not bad, bad
        print("clean")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_the_probe_sees_textual_when_it_is_loaded(home: Path, catalog: CatalogFn) -> None:
    """The check itself works: importing Textual first is reported."""
    cat = catalog(alpha="http://127.0.0.1:9/alpha")
    report = probe(["job-params"], home, cat)
    assert report["textual"] == []
    env = {**os.environ, "DSM_HOME": str(home), "DSM_CATALOG": str(cat)}
    result = subprocess.run(
        [sys.executable, "-c", "import textual; " + PROBE, json.dumps(["job-params"])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stderr.strip().splitlines()[-1])["textual"] != []


def test_python_api_loads_no_textual() -> None:
    """`import dsm` is light (the API loads on first use) and the API never loads Textual."""
    code = textwrap.dedent(
        """
        import json, sys
        import dsm
        light = not any(m in sys.modules for m in ("dsm.library", "httpx", "textual"))
        api = dsm.ensure, dsm.aensure, dsm.DatasetError, dsm.datasets
        from dsm import *
        bad = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
        print(json.dumps({"light": light, "textual": bad, "loaded": "dsm.library" in sys.modules,
                          "star": sorted(n for n in dsm.__all__ if n in globals())}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["light"] is True
    assert report["loaded"] is True
    assert report["textual"] == []
    assert report["star"] == sorted(dsm.__all__)


def test_httpx_command_line_loads_on_first_use() -> None:
    """dsm defers httpx's command line (click, rich, pygments); using it still works."""
    code = textwrap.dedent(
        """
        import sys
        import dsm, httpx
        assert "rich" not in sys.modules and "click" not in sys.modules, "loaded at import"
        from httpx._main import print_response  # any name loads the real module
        assert "click" in sys.modules
        httpx.main(["--help"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "A next generation HTTP client" in result.stdout
