"""dsm.engine.liveness: the owner-lock probe that `dsm list` and `dsm show` use."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from dsm.engine.liveness import owner_lock_path, owner_running


def test_an_owner_is_running_only_while_its_lock_is_held(tmp_path: Path) -> None:
    assert owner_running(tmp_path, "gone") is False
    assert list(tmp_path.iterdir()) == []  # the probe creates nothing
    path = owner_lock_path(tmp_path, "abc")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        assert owner_running(tmp_path, "abc") is False  # a file left by a dead process
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live engine holds
        assert owner_running(tmp_path, "abc") is True
        assert owner_running(tmp_path, "abc") is True  # the probe took nothing away
    finally:
        os.close(fd)
    assert owner_running(tmp_path, "abc") is False


def test_a_lock_that_cannot_be_asked_is_never_called_dead(tmp_path: Path) -> None:
    path = owner_lock_path(tmp_path, "abc")
    path.symlink_to(tmp_path / "elsewhere")  # O_NOFOLLOW refuses it: not known dead
    assert owner_running(tmp_path, "abc") is True


def test_a_dead_owner_s_lock_held_by_another_probe_is_still_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dsm list` probing a dead owner holds its free lock while it asks (for as long as its
    process is not scheduled): an engine that asked then counted the owner live and left its
    jobs for its next start. A probe asked while another holds the lock says dead."""
    owner_lock_path(tmp_path, "dead").touch()  # left by a killed engine
    real = fcntl.flock
    answers: list[bool] = []
    holding: list[int] = []

    def probe_meanwhile(fd: int, op: int) -> None:
        real(fd, op)
        if not holding:  # the first probe holds the lock now: another asks before it lets go
            holding.append(fd)
            answers.append(owner_running(tmp_path, "dead"))

    monkeypatch.setattr(fcntl, "flock", probe_meanwhile)
    assert owner_running(tmp_path, "dead") is False
    assert answers == [False]
