"""Options that would be silently ignored, and numbers that are not numbers, are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CatalogFn, run_dsm


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
