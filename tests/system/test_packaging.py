"""Installed from a wheel, dsm takes one import name, `dsm`: no top-level app, store, widgets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from dsm.version import __version__

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("app", "widgets", "store", "pyproject.toml", "README.md")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


def test_wheel_installs_only_the_dsm_package(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in SOURCES:  # a copy: the build leaves its debris there, not in the checkout
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(origin, src / name)
    # No build isolation: the test extra brings setuptools, so nothing is fetched.
    pip = (sys.executable, "-m", "pip")
    run(
        *pip,
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        tmp_path / "dist",
        src,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("dsm-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    # The dependencies come from this test's environment, after the venv's own site-packages
    # (a .pth line adds a folder without running the .pth files in it, e.g. an editable dsm).
    site = Path(
        run(
            py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    listing = run(py, "-m", "pip", "show", "-f", "dsm", cwd=tmp_path)
    files = [line.strip() for line in listing.split("Files:")[1].splitlines() if line.strip()]
    tops = {f.split("/")[0] for f in files if not f.startswith("..")}
    assert tops == {"dsm", wheel.name.split("-py")[0] + ".dist-info"}, tops
    for packaged in (
        "dsm/library.py",
        "dsm/widgets/__init__.py",
        "dsm/store/db.py",
        "dsm/datasets.json",
    ):
        assert packaged in files

    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    env["DSM_HOME"] = str(tmp_path / "home")
    where = run(
        py, "-c", "import dsm, dsm.library; print(dsm.library.__file__)", cwd=tmp_path, env=env
    )
    assert Path(where.strip()).is_relative_to(site)
    assert (
        run(venv / "bin" / "dsm", "--version", cwd=tmp_path, env=env).strip()
        == f"dsm {__version__}"
    )
    assert run(py, "-m", "dsm", "--version", cwd=tmp_path, env=env).strip() == f"dsm {__version__}"
    # The bundled catalogue ships in the wheel: the API and the command read it offline.
    names = run(py, "-c", "import dsm; print(len(dsm.datasets()))", cwd=tmp_path, env=env)
    assert int(names) > 0
    assert "page 1" in run(venv / "bin" / "dsm", "list", cwd=tmp_path, env=env)
