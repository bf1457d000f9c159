"""Shell completion: `dsm completion SHELL` scripts, run by real bash, zsh and fish."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CatalogFn, dsm_env, run_dsm

NAMES = ["alpha", "beta", "gsm8k"]
COMMANDS = ["list", "show", "job-params", "serve", "cache", "completion"]


@pytest.fixture
def env(home: Path, catalog: CatalogFn) -> dict[str, str]:
    """The environment a user's shell has: this venv's `dsm` first on PATH, a catalogue."""
    cat = catalog(**{n: f"http://127.0.0.1:9/{n}" for n in NAMES})
    out = dsm_env(home, cat)
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out['PATH']}"
    return out


def shell(argv: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def bash_complete(words: list[str], env: dict[str, str]) -> list[str]:
    """COMPREPLY for a command line whose last word is being completed."""
    quoted = " ".join(f"'{w}'" for w in words)
    code = (
        "source <(dsm completion bash); "
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _dsm; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    return shell(["bash", "-c", code], env).split()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["dsm", "show", ""], NAMES),
        (["dsm", "--run-job", "download", "--dataset", "g"], ["gsm8k"]),
        (["dsm", ""], COMMANDS),
        (["dsm", "--run-job", ""], ["download", "update", "delete", "verify"]),
        (["dsm", "list", "--page"], ["--page-size", "--page"]),
        (["dsm", "--hom"], ["--home"]),
        (["dsm", "completion", ""], ["bash", "zsh", "fish"]),
        (["dsm", "cache", ""], ["status", "push"]),
        (["dsm", "cache", "p"], ["push"]),
        # An action's own positional: push takes dataset names (it offered status, push).
        (["dsm", "cache", "push", ""], NAMES),
        (["dsm", "cache", "push", "alpha", "g"], ["gsm8k"]),
        (["dsm", "cache", "status", ""], []),
        (["dsm", "show", "push", ""], NAMES),  # a dataset named like an action: still show's
        (["dsm", "--workers", ""], []),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bash_completes(words: list[str], expected: list[str], env: dict[str, str]) -> None:
    assert bash_complete(words, env) == expected


def test_names_come_from_the_catalogue(env: dict[str, str], home: Path) -> None:
    listed = run_dsm("list", "--names", home=home, env={"DSM_CATALOG": env["DSM_CATALOG"]})
    assert listed.stdout.split() == NAMES
    both = run_dsm("list", "--names", "--json", home=home, env={"DSM_CATALOG": env["DSM_CATALOG"]})
    assert both.returncode == 2
    assert "--names" in both.stderr


def test_unknown_shell_is_bad_input(home: Path) -> None:
    result = run_dsm("completion", "tcsh", home=home)
    assert result.returncode == 2
    assert "invalid choice: 'tcsh'" in result.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_parses_and_completes(env: dict[str, str]) -> None:
    # compsys is interactive-only: stand-ins for compadd and compdef print what is offered.
    code = (
        "compadd() { [[ $1 == -- ]] && shift; print -l -- $@; }; compdef() { :; }; "
        "source <(dsm completion zsh); "
        'words=(dsm show ""); CURRENT=3; _dsm; '
        'words=(dsm ""); CURRENT=2; _dsm; '
        "words=(dsm list --pa); CURRENT=3; _dsm; "
        'print -- "|"; words=(dsm cache push ""); CURRENT=4; _dsm'
    )
    offered, pushed = (part.split() for part in shell(["zsh", "-f", "-c", code], env).split("|"))
    assert pushed == NAMES
    assert offered[: len(NAMES)] == NAMES
    assert offered[len(NAMES) : len(NAMES) + len(COMMANDS)] == COMMANDS
    assert {"--page-size", "--page", "--json"} <= set(offered[len(NAMES) + len(COMMANDS) :])
    script = shell(["dsm", "completion", "zsh"], env)
    assert shell(["zsh", "-n", "-c", script], env) == ""


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_script_parses_and_completes(env: dict[str, str]) -> None:
    def complete(line: str) -> list[str]:
        code = f"dsm completion fish | source; complete -C '{line}'"
        return [row.split("\t")[0] for row in shell(["fish", "-c", code], env).splitlines()]

    assert complete("dsm show ") == NAMES
    assert complete("dsm --dataset b") == ["beta"]
    assert set(COMMANDS) <= set(complete("dsm "))
    assert complete("dsm --run-job ") == ["delete", "download", "update", "verify"]
    assert complete("dsm cache ") == ["push", "status"]
    assert complete("dsm cache push ") == NAMES
    assert complete("dsm cache status ") == []
    assert shell(["fish", "-n", "-c", shell(["dsm", "completion", "fish"], env)], env) == ""
