"""partfile.folder_fd: a folder reached without following a symbolic link at any level,
by openat2 where the kernel has it and one name at a time where it does not."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from dsm.transfer import partfile


@pytest.fixture(params=["openat2", "walk"])
def resolve(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "walk":
        monkeypatch.setattr(partfile, "_no_links_open", None)
    return str(request.param)


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split(".")
    return (int(release[0]), int(release[1].split("-")[0])) >= (major, minor)


def test_the_kernel_s_walk_is_used_where_it_exists() -> None:
    if not (sys.platform.startswith("linux") and _kernel_at_least(5, 6)):
        assert partfile._no_links_open is None or callable(partfile._no_links_open)
        return
    assert partfile._no_links_open is not None


def test_a_folder_is_opened_as_itself(tmp_path: Path, resolve: str) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    fd = partfile.folder_fd(tmp_path / "a" / "b")
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "a" / "b"))
    finally:
        os.close(fd)


@pytest.mark.parametrize("level", ["a", "a/b"])
def test_a_link_at_any_level_is_refused_naming_it(tmp_path: Path, resolve: str, level: str) -> None:
    real = tmp_path / "real"
    (real / "b").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    if level == "a/b":
        (tmp_path / "a" / "b").symlink_to(real / "b")
    else:
        (tmp_path / "a").rmdir()
        (tmp_path / "a").symlink_to(real)
    with pytest.raises(OSError) as caught:
        partfile.folder_fd(tmp_path / "a" / "b")
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)  # O_DIRECTORY answers first
    assert f"{tmp_path / level} is a symbolic link or no folder" in str(caught.value)


def test_missing_folders_are_made_only_when_asked(tmp_path: Path, resolve: str) -> None:
    with pytest.raises(FileNotFoundError):
        partfile.folder_fd(tmp_path / "x" / "y")
    partfile.make_folders(tmp_path / "x" / "y")
    assert (tmp_path / "x" / "y").is_dir()
