"""partfile.folder_fd: a folder reached without following a symbolic link at any level,
by openat2 where the kernel has it and one name at a time where it does not."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dsm.errors import Swapped
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


def test_a_nul_in_the_path_is_refused_not_cut_short(tmp_path: Path, resolve: str) -> None:
    (tmp_path / "x").mkdir()  # what C would read the path as, up to the NUL
    with pytest.raises(ValueError, match="null byte"):
        partfile.folder_fd(tmp_path / "x\0y")


def _as_another_user(home: Path) -> int:
    """Exit status of a child that reaches `home` and makes a folder in it, as nobody when
    root (root reads any folder)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            os.close(partfile.folder_fd(home))
            partfile.make_folders(home / "new")
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not hasattr(os, "O_PATH"), reason="O_PATH is Linux's")
def test_a_folder_above_that_cannot_be_read_is_passed_through(resolve: str) -> None:
    """A folder above the home that is execute-only (`--x`: `/home/alice` shared as 0711) is
    searched, not read: the walk opened it for reading and every download failed EACCES."""
    top = Path(tempfile.mkdtemp())
    try:
        (top / "home").mkdir()
        (top / "home").chmod(0o777)
        top.chmod(0o311)  # no one but root may read it; everyone may pass through
        assert _as_another_user(top / "home") == 0
        assert (top / "home" / "new").is_dir()
    finally:
        top.chmod(0o700)
        shutil.rmtree(top)


@pytest.mark.parametrize("refusal", ["ENOSYS", "EISDIR"])
def test_a_kernel_that_refuses_openat2_leaves_the_walk(
    monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """A kernel before 5.6 answers ENOSYS (a seccomp filter EPERM), and any other refusal of
    the probe (here EISDIR, asked to open `/` for writing) leaves the walk: dsm imports."""
    if not sys.platform.startswith("linux"):
        assert partfile._openat2() is None
        return
    if refusal == "ENOSYS":
        monkeypatch.setattr(partfile, "_SYS_OPENAT2", 100_000)  # no such system call
    else:
        monkeypatch.setattr(partfile, "_FOLDER", os.O_WRONLY | os.O_DIRECTORY)
    assert partfile._openat2() is None


def test_a_file_swapped_for_a_link_before_its_rename_is_never_installed(
    tmp_path: Path, resolve: str
) -> None:
    """Another user of a shared home replaces dsm's finished `.part` by a link to a file of
    their choosing: the rename would have put the link where the verified file goes (and its
    target's stat recorded as the copy's). It is removed and refused; the target untouched."""
    chosen = tmp_path / "chosen.json"
    chosen.write_bytes(b"not the dataset\n")
    (tmp_path / "home").mkdir()
    part = tmp_path / "home" / "d.json.part"
    part.symlink_to(chosen)
    with pytest.raises(OSError, match="swapped for a symbolic link or no file"):
        partfile.replace_own(part, "d.json")
    assert not (tmp_path / "home" / "d.json").is_symlink()
    assert not (tmp_path / "home" / "d.json").exists()
    assert chosen.read_bytes() == b"not the dataset\n"


def test_the_placed_file_s_own_status_is_returned(tmp_path: Path, resolve: str) -> None:
    part = tmp_path / "d.json.part"
    part.write_bytes(b"12345")
    placed = partfile.replace_own(part, "d.json")
    assert placed.st_size == 5
    assert placed.st_ino == (tmp_path / "d.json").stat().st_ino


def _another_file_at(part: Path, data: bytes, move: Callable[..., None] = os.replace) -> None:
    """`mv other.bin x.part` by another process of a shared home (same owner)."""
    other = part.with_name("other.bin")
    other.write_bytes(data)
    move(other, part)


def test_a_file_swapped_for_another_file_before_its_rename_is_never_installed(
    tmp_path: Path, resolve: str
) -> None:
    """dsm wrote and hashed `d.bin.part`; another file took its name before the rename: it
    was installed as the verified copy (recorded with the hash of dsm's bytes). It is
    removed and refused; the copy in place stays."""
    part, dest = tmp_path / "d.bin.part", tmp_path / "d.bin"
    dest.write_bytes(b"previous verified copy")
    part.write_bytes(b"the bytes dsm hashed")
    written = partfile.file_id(part.stat())
    _another_file_at(part, b"not the dataset")
    with pytest.raises(Swapped, match=r"d\.bin\.part was swapped for another file than the one"):
        partfile.replace_own(part, dest.name, written)
    assert not part.exists()
    assert dest.read_bytes() == b"previous verified copy"


def test_a_file_swapped_between_the_check_and_the_rename_is_removed(
    tmp_path: Path, resolve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap lands after the check before the rename: the placed file is checked too."""
    part, dest = tmp_path / "d.bin.part", tmp_path / "d.bin"
    part.write_bytes(b"the bytes dsm hashed")
    written = partfile.file_id(part.stat())
    rename = os.replace

    def swapped_first(src: str, dst: str, **fds: int) -> None:
        _another_file_at(part, b"not the dataset", rename)
        rename(src, dst, **fds)

    monkeypatch.setattr(os, "replace", swapped_first)
    with pytest.raises(Swapped, match="swapped for another file"):
        partfile.replace_own(part, dest.name, written)
    assert not dest.exists() and not part.exists()


def test_a_copy_removed_right_after_its_rename_is_said_so(
    tmp_path: Path, resolve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removed by another program between the rename and the check after it: the message
    said it was removed *before* it was moved into place."""
    part, dest = tmp_path / "d.bin.part", tmp_path / "d.bin"
    part.write_bytes(b"the bytes dsm hashed")
    rename = os.replace

    def removed_after(src: str, dst: str, **fds: int) -> None:
        rename(src, dst, **fds)
        dest.unlink()

    monkeypatch.setattr(os, "replace", removed_after)
    with pytest.raises(Swapped, match=r"d\.bin\.part was removed right after it was moved"):
        partfile.replace_own(part, dest.name, partfile.file_id(part.stat()))


def test_the_file_dsm_wrote_is_installed(tmp_path: Path, resolve: str) -> None:
    part = tmp_path / "d.bin.part"
    part.write_bytes(b"the bytes dsm hashed")
    placed = partfile.replace_own(part, "d.bin", partfile.file_id(part.stat()))
    assert (tmp_path / "d.bin").read_bytes() == b"the bytes dsm hashed"
    assert partfile.file_id(placed) == partfile.file_id((tmp_path / "d.bin").stat())
