"""Unpacking with real archives built here (tarfile, zipfile, gzip) and real files: every
kind unpacks with its file list, and every hostile archive is refused naming its member,
with nothing written outside the temporary path and the previous copy left whole."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from dsm.engine import unpack
from dsm.errors import ArchiveError

LIMITS = unpack.Limits(max_bytes=10 << 20, max_members=100)


def nothing() -> None:
    """The checkpoint of an unpack nobody cancels."""


def tar_bytes(members: Sequence[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def zip_bytes(members: Sequence[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicates we build on purpose
        with zipfile.ZipFile(buf, "w") as zf:
            for info, data in members:
                zf.writestr(info, data)
    return buf.getvalue()


def zip_link(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def deflated(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A folder holding only the archive's destination; `outside` is its neighbour."""
    root = tmp_path / "home" / "data"
    root.mkdir(parents=True)
    return root / "tree"


def run(place: Path, name: str, body: bytes, kind: str, **limits: int) -> list[unpack.Unpacked]:
    archive = place.parent.parent / name
    archive.write_bytes(body)
    return unpack.unpack(
        archive, kind, place, unpack.Limits(**{**LIMITS.__dict__, **limits}), nothing
    )


def everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_every_kind_unpacks_with_its_file_list(place: Path) -> None:
    data = {"a.txt": b"alpha", "sub/b.txt": b"beta" * 1000}
    files = [(member(n), d) for n, d in data.items()]
    want = sorted(
        unpack.Unpacked(n, len(d), hashlib.sha256(d).hexdigest()) for n, d in data.items()
    )
    for kind, mode in [("tar", "w"), ("tar.gz", "w:gz"), ("tar.bz2", "w:bz2"), ("tar.xz", "w:xz")]:
        got = run(place, f"x.{kind}", tar_bytes(files, mode), kind)
        assert sorted(got) == want, kind
        unpack.place(place)
        assert (place / "sub" / "b.txt").read_bytes() == data["sub/b.txt"]
    got = run(place, "x.zip", zip_bytes(list(data.items())), "zip")
    assert sorted(got) == want
    unpack.place(place)
    assert everything_under(place) == {"a.txt", "sub", "sub/b.txt"}
    single = tmp = place.parent / "single.jsonl"
    got = run(single, "x.gz", gzip.compress(b"line\n" * 100), "gz")
    assert got == [
        unpack.Unpacked("single.jsonl", 500, hashlib.sha256(b"line\n" * 100).hexdigest())
    ]
    unpack.place(tmp)
    assert single.read_bytes() == b"line\n" * 100


def test_a_hard_link_inside_is_a_copy_of_its_target(place: Path) -> None:
    body = tar_bytes(
        [(member("a.txt"), b"alpha"), (member("b.txt", tarfile.LNKTYPE, "a.txt"), None)]
    )
    got = run(place, "x.tar", body, "tar")
    assert [f.path for f in got] == ["a.txt", "b.txt"]
    assert (unpack.temp_of(place) / "b.txt").read_bytes() == b"alpha"


def test_an_archive_of_a_folder_with_its_own_entry_unpacks(place: Path) -> None:
    """`tar -C dir -cf x.tar .` and zip tools put the folder itself first (`./`): the root
    of the tree, nothing to refuse; its files are unpacked as usual."""
    folder = member("./", tarfile.DIRTYPE)
    files = [(member("./a.txt"), b"alpha"), (member("./sub/b.txt"), b"beta")]
    got = run(place, "x.tar", tar_bytes([(folder, None), *files]), "tar")
    assert [f.path for f in got] == ["a.txt", "sub/b.txt"]
    got = run(place, "x.zip", zip_bytes([("./", b""), ("./a.txt", b"alpha")]), "zip")
    assert [f.path for f in got] == ["a.txt"]
    assert (unpack.temp_of(place) / "a.txt").read_bytes() == b"alpha"
    # Only as a folder: a file named `.` would be the tree itself.
    with pytest.raises(ArchiveError, match=re.escape("member '.': empty path")):
        run(place, "y.tar", tar_bytes([(member("."), b"x")]), "tar")


HOSTILE: list[tuple[str, str, bytes, str]] = [
    ("tar-dotdot", "tar", tar_bytes([(member("../outside.txt"), b"x")]), "'../outside.txt'"),
    ("tar-absolute", "tar", tar_bytes([(member("/tmp/abs.txt"), b"x")]), "'/tmp/abs.txt'"),
    (
        "tar-symlink-out",
        "tar",
        tar_bytes([(member("link", tarfile.SYMTYPE, "../../outside"), None)]),
        "'link'",
    ),
    (
        "tar-symlink-then-write-through",
        "tar",
        tar_bytes([(member("d", tarfile.SYMTYPE, "."), None), (member("d/x"), b"x")]),
        "'d': symbolic links are not unpacked",
    ),
    (
        "tar-hardlink-out",
        "tar",
        tar_bytes([(member("hl", tarfile.LNKTYPE, "../outside.txt"), None)]),
        "'hl'",
    ),
    ("tar-device", "tar", tar_bytes([(member("dev", tarfile.CHRTYPE), None)]), "'dev'"),
    ("tar-fifo", "tar", tar_bytes([(member("fifo", tarfile.FIFOTYPE), None)]), "'fifo'"),
    (
        "tar-duplicate",
        "tar",
        tar_bytes([(member("a.txt"), b"one"), (member("a.txt"), b"two")]),
        "'a.txt': would overwrite another member",
    ),
    (
        "tar-file-then-folder",
        "tar",
        tar_bytes([(member("a"), b"file"), (member("a/b"), b"inside")]),
        "'a/b': would be written inside file 'a'",
    ),
    (
        "tar-folder-then-file",
        "tar",
        tar_bytes([(member("a/b"), b"inside"), (member("a"), b"file")]),
        "'a': would overwrite another member",
    ),
    ("zip-dotdot", "zip", zip_bytes([("../outside.txt", b"x")]), "'../outside.txt'"),
    ("zip-absolute", "zip", zip_bytes([("/tmp/abs.txt", b"x")]), "'/tmp/abs.txt'"),
    ("zip-drive", "zip", zip_bytes([("C:/x.txt", b"x")]), "'C:/x.txt': absolute path"),
    ("zip-backslash", "zip", zip_bytes([("..\\outside.txt", b"x")]), "backslash"),
    (
        "zip-symlink",
        "zip",
        zip_bytes([(zip_link("link", "../outside"), b"../outside")]),
        "'link': symbolic link",
    ),
    (
        "zip-duplicate",
        "zip",
        zip_bytes([("a.txt", b"one"), ("a.txt", b"two")]),
        "'a.txt': would overwrite another member",
    ),
    (
        "zip-file-then-folder",
        "zip",
        zip_bytes([("a", b"file"), ("a/b", b"inside")]),
        "'a/b': would be written inside file 'a'",
    ),
]


@pytest.mark.parametrize(
    ("kind", "body", "named"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_archive_is_refused_naming_the_member(
    place: Path, kind: str, body: bytes, named: str
) -> None:
    place.mkdir()
    (place / "old.txt").write_bytes(b"previous copy")
    outside = place.parent.parent
    before = everything_under(outside)
    with pytest.raises(ArchiveError, match="member ") as caught:
        run(place, f"x.{kind}", body, kind)
    assert named in str(caught.value)
    # Nothing written anywhere (the temporary path is gone) and the previous copy is whole.
    assert everything_under(outside) == before | {f"x.{kind}"}
    assert (place / "old.txt").read_bytes() == b"previous copy"


@pytest.mark.parametrize("kind", ["tar.gz", "zip", "gz"])
def test_decompression_bomb_stops_at_the_byte_limit(place: Path, kind: str) -> None:
    zeros = b"\0" * (4 << 20)  # compresses to a few kilobytes
    body = {
        "tar.gz": lambda: tar_bytes([(member("bomb"), zeros)], "w:gz"),
        "zip": lambda: zip_bytes([(deflated("bomb"), zeros)]),
        "gz": lambda: gzip.compress(zeros),
    }[kind]()
    assert len(body) < len(zeros) // 100
    with pytest.raises(ArchiveError, match=r"exceeds 1048576 bytes \(DSM_EXTRACT_MAX_BYTES\)"):
        run(place, f"x.{kind}", body, kind, max_bytes=1 << 20)
    assert not unpack.temp_of(place).exists() and not place.exists()


def test_too_many_members_is_refused(place: Path) -> None:
    body = zip_bytes([(f"f{i}", b"x") for i in range(20)])
    with pytest.raises(
        ArchiveError, match=r"'f10': more than 10 members \(DSM_EXTRACT_MAX_MEMBERS"
    ):
        run(place, "x.zip", body, "zip", max_members=10)
    assert not unpack.temp_of(place).exists()


def test_not_an_archive_is_a_clear_error(place: Path) -> None:
    with pytest.raises(ArchiveError, match=r"not a valid tar\.gz archive"):
        run(place, "x.tar.gz", b"plain text, not gzip", "tar.gz")
    assert not unpack.temp_of(place).exists()


def test_a_cancel_between_members_removes_the_temporary_copy(place: Path) -> None:
    place.mkdir()
    (place / "old.txt").write_bytes(b"previous copy")
    archive = place.parent / "x.zip"
    archive.write_bytes(zip_bytes([(f"f{i}", b"x") for i in range(5)]))
    calls = 0

    class Canceled(Exception):
        pass

    def cancel_at_third() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Canceled

    with pytest.raises(Canceled):
        unpack.unpack(archive, "zip", place, LIMITS, cancel_at_third)
    assert not unpack.temp_of(place).exists()
    assert everything_under(place) == {"old.txt"}


@pytest.mark.parametrize("kind", ["gz", "tar.xz", "tar.bz2", "zip"])
def test_a_corrupt_stream_is_a_clear_error(place: Path, kind: str) -> None:
    data = bytes(range(256)) * 400
    body = {
        "gz": lambda: gzip.compress(data),
        "tar.xz": lambda: tar_bytes([(member("a"), data)], "w:xz"),
        "tar.bz2": lambda: tar_bytes([(member("a"), data)], "w:bz2"),
        "zip": lambda: zip_bytes([(deflated("a"), data)]),
    }[kind]()
    mid = len(body) // 2
    corrupt = body[:mid] + b"\x00\xff" * 8 + body[mid + 16 :]
    with pytest.raises(ArchiveError, match=f"not a valid {re.escape(kind)} archive"):
        run(place, f"x.{kind}", corrupt, kind)
    assert not unpack.temp_of(place).exists()


def test_a_dangling_hard_link_is_refused(place: Path) -> None:
    dangling = tar_bytes([(member("hl", tarfile.LNKTYPE, "missing.txt"), None)])
    with pytest.raises(ArchiveError, match="'hl': cannot be read"):
        run(place, "x.tar", dangling, "tar")
    assert not unpack.temp_of(place).exists()
