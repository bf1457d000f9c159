"""Settings: the team cache options and the network-filesystem check of the home."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dsm.config import load_settings, network_filesystem
from dsm.errors import BadInput


def settings_with(**env: str) -> tuple[str | None, bool]:
    s = load_settings(home="/tmp/h", catalog="/tmp/c.json", env=env)
    return s.cache_url, s.cache_push


def test_the_cache_is_off_unless_a_url_is_given() -> None:
    assert settings_with() == (None, True)
    assert settings_with(DSM_CACHE_URL="s3://team/evals") == ("s3://team/evals", True)
    assert settings_with(DSM_CACHE_URL="s3://team", DSM_CACHE_PUSH="0") == ("s3://team", False)


def test_the_flag_wins_over_the_environment() -> None:
    s = load_settings(cache_url="s3://flag/x", env={"DSM_CACHE_URL": "s3://env/y"})
    assert s.cache_url == "s3://flag/x"


@pytest.mark.parametrize("bad", ["http://bucket/x", "s3://", "team/evals", "s3:///prefix"])
def test_a_cache_url_that_names_no_bucket_is_bad_input(bad: str) -> None:
    with pytest.raises(BadInput, match=r"DSM_CACHE_URL=.*s3://BUCKET/PREFIX"):
        settings_with(DSM_CACHE_URL=bad)


def test_cache_push_takes_a_clear_yes_or_no() -> None:
    with pytest.raises(BadInput, match="DSM_CACHE_PUSH='maybe'"):
        settings_with(DSM_CACHE_PUSH="maybe")


def test_the_size_limits_have_generous_defaults_and_refuse_nonsense() -> None:
    s = load_settings(home="/tmp/h", catalog="/tmp/c.json", env={})
    assert (s.download_max_bytes, s.extract_max_memory) == (1 << 40, 256 << 20)
    env = {"DSM_DOWNLOAD_MAX_BYTES": "1048576", "DSM_EXTRACT_MAX_MEMORY": str(64 << 20)}
    s = load_settings(home="/tmp/h", catalog="/tmp/c.json", env=env)
    assert (s.download_max_bytes, s.extract_max_memory) == (1 << 20, 64 << 20)
    with pytest.raises(BadInput, match="DSM_DOWNLOAD_MAX_BYTES='0' must be at least 1"):
        load_settings(env={"DSM_DOWNLOAD_MAX_BYTES": "0"})
    with pytest.raises(BadInput, match="DSM_EXTRACT_MAX_MEMORY='1000' must be at least 1048576"):
        load_settings(env={"DSM_EXTRACT_MAX_MEMORY": "1000"})


@pytest.mark.parametrize(
    ("env", "flags", "said"),
    [
        ({"DSM_WORKERS": "100000000"}, {}, "DSM_WORKERS='100000000' must be at most 256"),
        ({}, {"workers": "257"}, "--workers='257' must be at most 256"),
        ({"DSM_SEGMENTS": "65"}, {}, "DSM_SEGMENTS='65' must be at most 64"),
    ],
)
def test_a_setting_that_costs_up_front_has_a_maximum(
    env: dict[str, str], flags: dict[str, str], said: str
) -> None:
    """Each worker is a task started before the first job, each segment a thread:
    DSM_WORKERS=100000000 took 1 GB in 20 s before anything ran. Bad input, exit 2."""
    with pytest.raises(BadInput, match=re.escape(said)):
        load_settings(home="/tmp/h", catalog="/tmp/c.json", env=env, **flags)
    top = load_settings(env={"DSM_WORKERS": "256", "DSM_SEGMENTS": "64"})
    assert (top.workers, top.segments) == (256, 64)


MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
server:/export /mnt/team nfs4 rw 0 0
/dev/sdb1 /mnt/team/local ext4 rw 0 0
lustre@o2ib:/fs /scratch lustre rw 0 0
/dev/sdc1 /mnt/with\\040space xfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/home/me/.local/share/dsm", None),
        ("/mnt/team/dsm", "nfs4"),
        ("/mnt/team", "nfs4"),
        ("/mnt/team/local/dsm", None),  # the longest mount point decides
        ("/mnt/teamwork", None),  # a prefix of the name is not a parent
        ("/scratch/u/dsm", "lustre"),
        ("/mnt/with space/dsm", None),
    ],
)
def test_a_home_on_a_network_filesystem_is_recognised(
    tmp_path: Path, path: str, kind: str | None
) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert network_filesystem(Path(path), mounts) == kind


def test_no_mount_table_means_no_warning(tmp_path: Path) -> None:
    assert network_filesystem(Path("/x"), tmp_path / "missing") is None
