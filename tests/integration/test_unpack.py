"""Unpacking with real archives built here (tarfile, zipfile, gzip) and real files: every
kind unpacks with its file list, and every hostile archive is refused naming its member,
with nothing written outside the temporary path and the previous copy left whole."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable, Sequence
from functools import partial
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
    (
        "tar-names-differing-by-case",
        "tar",
        tar_bytes([(member("Data/x.txt"), b"one"), (member("data/x.txt"), b"two")]),
        "'data/x.txt': the same file as member 'Data/x.txt' on a case-insensitive file system",
    ),
    (
        "tar-names-differing-by-unicode-form",
        "tar",
        tar_bytes([(member("caf\u00e9.txt"), b"nfc"), (member("cafe\u0301.txt"), b"nfd")]),
        "'cafe\u0301.txt': the same file as member 'caf\u00e9.txt' on a case-insensitive",
    ),
    (
        "tar-folder-named-as-a-file-by-case",
        "tar",
        tar_bytes([(member("A"), b"file"), (member("a", tarfile.DIRTYPE), None)]),
        "'a': would be written inside file 'A' on a case-insensitive file system",
    ),
    (
        "tar-escape-in-a-name",
        "tar",
        tar_bytes([(member("a\x1b]0;owned\x07.txt"), b"x")]),
        "a control character",
    ),
    ("zip-line-break-in-a-name", "zip", zip_bytes([("a\nb.txt", b"x")]), "a control character"),
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
        "zip-names-differing-by-case",
        "zip",
        zip_bytes([("Data/x.txt", b"one"), ("data/X.TXT", b"two")]),
        "'data/X.TXT': the same file as member 'Data/x.txt' on a case-insensitive file system",
    ),
    (
        "zip-file-where-a-folder-differing-by-case-is",
        "zip",
        zip_bytes([("Data/", b""), ("data", b"file")]),
        "'data': a file where member 'Data/' needs a folder on a case-insensitive file system",
    ),
    (
        "zip-file-inside-a-file-differing-by-case",
        "zip",
        zip_bytes([("a", b"file"), ("A/b", b"inside")]),
        "'A/b': would be written inside file 'a' on a case-insensitive file system",
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


def test_folders_differing_only_by_case_hold_different_files(place: Path) -> None:
    """As a catalogue's or a Hub repo's listing (`hub.clashes`): two files in folders told
    apart by case only are two files everywhere (on macOS, in one folder)."""
    body = tar_bytes([(member("Data/x.txt"), b"one"), (member("data/y.txt"), b"two")])
    assert [f.path for f in run(place, "x.tar", body, "tar")] == ["Data/x.txt", "data/y.txt"]


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


@pytest.mark.parametrize("kind", ["zip", "gz"])
def test_unpacking_stops_before_the_disk_is_full(small_disk: Path, kind: str) -> None:
    """32 MiB of zeros (a few KiB packed) onto a 16 MiB disk, far below the byte limit: it
    stops while 5% of the disk is left, naming the room (was ENOSPC: the disk filled up)."""
    zeros = b"\0" * (32 << 20)
    body = zip_bytes([(deflated("bomb"), zeros)]) if kind == "zip" else gzip.compress(zeros)
    archive = small_disk.parent / f"x.{kind}"  # not on the small disk
    archive.write_bytes(body)
    dest = small_disk / "tree"
    with pytest.raises(ArchiveError) as caught:
        unpack.unpack(archive, kind, dest, LIMITS.__class__(64 << 30, 100), nothing)
    reserve = shutil.disk_usage(small_disk).total // 20
    assert re.fullmatch(
        rf"member '(bomb|tree\.part)': stopped after \d+ bytes unpacked: "
        rf"{re.escape(str(unpack.temp_of(dest) if kind == 'zip' else small_disk))} has \d+ "
        rf"bytes free; {reserve} are kept free",
        str(caught.value),
    ), caught.value
    assert list(small_disk.iterdir()) == []


def test_too_many_members_is_refused(place: Path) -> None:
    body = tar_bytes([(member(f"f{i}"), b"x") for i in range(20)])
    with pytest.raises(
        ArchiveError, match=r"'f10': more than 10 members and folders \(DSM_EXTRACT_MAX_MEMBERS"
    ):
        run(place, "x.tar", body, "tar", max_members=10)
    assert not unpack.temp_of(place).exists()


def deep(top: str, depth: int) -> str:
    return top + "/a" * depth + "/f"


def test_a_tree_as_deep_as_a_path_may_go_unpacks_and_is_removed(place: Path) -> None:
    """A path of 256 names (`MAX_DEPTH`): unpacked and removed; one deeper is refused (a
    member 2,000 deep was a RecursionError in pathlib's mkdir; 900 deep unpacked into a tree
    no update or delete could remove: shutil.rmtree recursed once per folder)."""
    body = tar_bytes([(member(deep("d", 254)), b"deep")], "w:gz")
    [listed] = run(place, "x.tar.gz", body, "tar.gz", max_members=1_000)
    assert listed.path == deep("d", 254) and listed.size == 4
    unpack.place(place)
    assert (place / deep("d", 254)).read_bytes() == b"deep"
    unpack.remove_tree(place)
    assert not place.exists()
    body = tar_bytes([(member(deep("d", 255)), b"deep")], "w:gz")
    with pytest.raises(ArchiveError, match=r"\(513 characters\): a path more than 256 levels deep"):
        run(place, "x.tar.gz", body, "tar.gz", max_members=1_000)
    assert not unpack.temp_of(place).exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_folders_a_member_s_path_makes_count_as_members(place: Path, kind: str) -> None:
    """Three members 50 folders deep make 153 folders, past a limit of 100 (a 35 KB tar.gz of
    2,000 members 900 folders deep made 1.8 million folders, unlimited: 7 minutes, 1.8 GB of
    memory for the folders' full paths, the disk's inodes)."""
    names = [deep(f"d{i}", 50) for i in range(3)]
    body = (
        tar_bytes([(member(n), b"x") for n in names])
        if kind == "tar"
        else zip_bytes([(n, b"x") for n in names])
    )
    with pytest.raises(ArchiveError) as caught:
        run(place, f"x.{kind}", body, kind, max_members=100)
    assert re.fullmatch(
        r"member 'd1/a(/a)+/f': more than 100 members and folders \(DSM_EXTRACT_MAX_MEMBERS\)",
        str(caught.value),
    ), caught.value
    assert not unpack.temp_of(place).exists()
    assert len(run(place, f"x.{kind}", body, kind, max_members=200)) == 3


def test_the_names_held_are_bounded_by_the_memory_limit(place: Path) -> None:
    """Empty members with names of 4,000 characters: 1 MiB of names is refused at 1 MiB (a
    tar.gz of a few MiB holding a million of them held GiBs in the file list)."""
    names = [f"{i:04d}" + "n" * 250 + "/" + "m" * 250 for i in range(8)]
    body = tar_bytes([(member(f"{n}/{n}/{n}/{n}"), b"") for n in names], "w:gz")
    with pytest.raises(ArchiveError) as caught:
        run(place, "x.tar.gz", body, "tar.gz", max_memory=20_000)
    assert re.fullmatch(
        r"member '000\dn+'\.\.\. \(2023 characters\): the names of its files and "
        r"folders need more than 20000 bytes of memory \(DSM_EXTRACT_MAX_MEMORY\)",
        str(caught.value),
    ), caught.value
    assert not unpack.temp_of(place).exists()
    assert len(run(place, "x.tar.gz", body, "tar.gz", max_memory=1 << 20)) == 8


def with_end_record(body: bytes, entries: int, zip64: bool = False) -> bytes:
    """The zip `body` (no comment) with its end record claiming `entries` entries; `zip64`:
    through a ZIP64 end record and its locator, the classic record saying 0xFFFF."""
    cd_size, cd_offset = struct.unpack_from("<2L", body, len(body) - 10)
    head = body[:-22]
    if not zip64:
        return head + struct.pack(
            "<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, cd_size, cd_offset, 0
        )
    end64 = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(head), 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, cd_size, cd_offset, 0)
    return head + end64 + locator + end


@pytest.mark.parametrize(
    ("entries", "zip64", "said"),
    [
        (20, False, "lists 20 members, more than 10"),
        (0xFFFF, False, "lists 65535 members, more than 10"),
        (1 << 40, True, f"lists {1 << 40} members, more than 10"),
        # The count lies low: the entries themselves are counted.
        (
            1,
            False,
            "holds more than 10 members (DSM_EXTRACT_MAX_MEMBERS), though its end record says 1",
        ),
        (
            1,
            True,
            "holds more than 10 members (DSM_EXTRACT_MAX_MEMBERS), though its end record says 1",
        ),
    ],
    ids=["true-count", "claims-65535", "zip64-claims-2**40", "count-lies-low", "zip64-lies-low"],
)
def test_a_zip_listing_too_many_members_is_refused_before_it_is_read(
    place: Path, entries: int, zip64: bool, said: str
) -> None:
    """The member limit applies to the central directory before zipfile loads it whole (a
    claim of millions of entries, or a count that lies), ZIP64 records too."""
    body = with_end_record(zip_bytes([(f"f{i}", b"x") for i in range(20)]), entries, zip64)
    with pytest.raises(ArchiveError, match=re.escape(said)):
        run(place, "x.zip", body, "zip", max_members=10)
    assert not unpack.temp_of(place).exists()
    # The same records within the limit: zipfile reads them as we do, the zip unpacks.
    body = with_end_record(zip_bytes([(f"f{i}", b"x") for i in range(3)]), 3, zip64)
    assert [f.path for f in run(place, "y.zip", body, "zip", max_members=10)] == ["f0", "f1", "f2"]


def peak_memory(unpacking: Callable[[], object]) -> tuple[int, str]:
    """The most memory Python held while `unpacking` ran, and its ArchiveError ("": none)."""
    tracemalloc.start()
    try:
        unpacking()
        said = ""
    except ArchiveError as exc:
        said = str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, said


def test_a_hard_link_does_not_load_every_member_of_a_tar(place: Path) -> None:
    """A hard link early in a tar with 10,000 members more: refused at the member limit with
    only a few members' headers in memory (tarfile's own lookup of a link's target read every
    header first: 4.5 MiB here, GiBs for millions)."""
    more = [(member(f"member-{i:06d}.txt"), b"") for i in range(10_000)]
    link = member("hl", tarfile.LNKTYPE, "a.txt")
    body = tar_bytes([(member("a.txt"), b"alpha"), (link, None), *more], "w:gz")
    unpacking = partial(run, place, "x.tar.gz", body, "tar.gz", max_members=10)
    peak, said = peak_memory(unpacking)
    assert "more than 10 members" in said and peak < 2 << 20
    # Below the limit: the headers read are not all kept either (tarfile keeps each one).
    folders = [(member("d", tarfile.DIRTYPE), None)] * 6_000  # 2.6 MiB of headers kept
    body = tar_bytes([(member("a.txt"), b"alpha"), *folders], "w:gz")
    unpacking = partial(run, place, "y.tar.gz", body, "tar.gz", max_members=100_000)
    peak, said = peak_memory(unpacking)
    assert said == "" and peak < 2 << 20
    assert (unpack.temp_of(place) / "d").is_dir()


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


@pytest.mark.parametrize("order", ["missing", "later", "folder"])
def test_a_dangling_hard_link_is_refused(place: Path, order: str) -> None:
    """A hard link is a copy of a file written before it: not of a member after it, nor of
    a folder."""
    link: tuple[tarfile.TarInfo, bytes | None] = (member("hl", tarfile.LNKTYPE, "a.txt"), None)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = {
        "missing": [link],
        "later": [link, (member("a.txt"), b"alpha")],
        "folder": [(member("a.txt", tarfile.DIRTYPE), None), link],
    }[order]
    with pytest.raises(ArchiveError, match="'hl': cannot be read"):
        run(place, "x.tar", tar_bytes(members), "tar")
    assert not unpack.temp_of(place).exists()


def long_name_tar(size: int) -> bytes:
    """A tar.gz whose first header is a GNU long name of `size` bytes ('a's: it packs to
    size/1000), before one file."""
    long = tarfile.TarInfo("././@LongLink")
    long.type, long.size = tarfile.GNUTYPE_LONGNAME, size
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
        gz.write(long.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(size >> 20):
            gz.write(b"a" * (1 << 20))
        gz.write(tar_bytes([(member("x"), b"x")]))
    return out.getvalue()


@pytest.mark.parametrize(
    ("what", "said"),
    [
        ("gnu-long-name", "refused: a header of 67108864 bytes (a pax header or a GNU long name)"),
        ("pax-header", "refused: a header of 5243392 bytes (a pax header or a GNU long name)"),
        ("pax-path", "a name longer than 4096 characters"),
        ("pax-link", "a name longer than 4096 characters"),
    ],
)
def test_a_tar_header_too_large_to_hold_is_refused(place: Path, what: str, said: str) -> None:
    """tarfile reads an extended header whole, at the size the archive declares: a 64 MiB
    long name packs to 64 KiB (512 MiB held 4 GiB of memory and failed with a name of 512
    MiB in its message, which goes to the store). Names past PATH_MAX are refused, and the
    message shows only their start."""
    if what == "gnu-long-name":
        body = long_name_tar(64 << 20)
    else:
        info = member("a.txt", tarfile.LNKTYPE if what == "pax-link" else tarfile.REGTYPE)
        if what == "pax-header":
            info.pax_headers = {"comment": "c" * (5 << 20)}
        elif what == "pax-path":
            info.name = "d/" * 2500 + "a.txt"
        else:
            info.linkname = "d/" * 2500 + "a.txt"
        body = tar_bytes([(info, b"x" if what != "pax-link" else None)], "w:gz")
    assert len(body) < 1 << 20
    peak, message = peak_memory(partial(run, place, "x.tar.gz", body, "tar.gz"))
    assert said in message and len(message) < 400, message[:1000]
    assert peak < 16 << 20
    assert not unpack.temp_of(place).exists()


def xz_with_dictionary(data: bytes, dict_size: int) -> bytes:
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
    return lzma.compress(data, format=lzma.FORMAT_XZ, filters=filters)


def test_an_xz_stream_needing_too_much_memory_is_refused(place: Path) -> None:
    """An 80-byte tar.xz whose header asks for a 1.5 GiB dictionary: the decoder would
    allocate it (a MemoryError under a 1 GiB address-space limit); refused, naming the limit."""
    tar = tar_bytes([(member("a.txt"), b"alpha")])
    body = xz_with_dictionary(tar, 1536 << 20)
    with pytest.raises(
        ArchiveError,
        match=r"needs more than 268435456 bytes of memory .*"
        r"\(its LZMA dictionary; DSM_EXTRACT_MAX_MEMORY\)",
    ):
        run(place, "x.tar.xz", body, "tar.xz", max_memory=256 << 20)
    assert not unpack.temp_of(place).exists()
    # Within the limit it unpacks, a tar cut into two concatenated xz streams too (as `xz`
    # and lzma.LZMAFile read them), and a hard link inside.
    tar = tar_bytes(
        [(member("a.txt"), b"alpha" * 5000), (member("b", tarfile.LNKTYPE, "a.txt"), None)]
    )
    body = xz_with_dictionary(tar[:10_000], 1 << 20) + xz_with_dictionary(tar[10_000:], 1 << 20)
    got = run(place, "y.tar.xz", body, "tar.xz", max_memory=256 << 20)
    assert [(f.path, f.size) for f in got] == [("a.txt", 25_000), ("b", 25_000)]


def test_a_zip_lzma_member_needing_too_much_memory_is_refused(place: Path) -> None:
    """A zip member compressed with LZMA whose properties ask for a 3 GiB dictionary: the
    raw decoder takes no memory limit, so the size is read from the member's header."""
    info = zipfile.ZipInfo("a.txt")
    info.compress_type = zipfile.ZIP_LZMA
    body = bytearray(zip_bytes([(info, b"alpha" * 100)]))
    props = 30 + len("a.txt") + 4  # the local header, the name, version and properties' size
    assert body[props] == 0x5D  # lc=3 lp=0 pb=2: the dictionary's size follows
    ok = bytes(body)
    body[props + 1 : props + 5] = struct.pack("<L", 3 << 30)
    with pytest.raises(
        ArchiveError,
        match=r"'a.txt': refused: its LZMA dictionary of "
        r"3221225472 bytes is more than 268435456 \(DSM_EXTRACT_MAX_MEMORY\)",
    ):
        run(place, "x.zip", bytes(body), "zip", max_memory=256 << 20)
    assert not unpack.temp_of(place).exists()
    assert [f.size for f in run(place, "y.zip", ok, "zip", max_memory=256 << 20)] == [500]


def test_others_cannot_write_into_a_tree_while_it_is_unpacked(place: Path) -> None:
    """In a group-shared home (umask 002) another member could plant a link in the staging
    folder between two members (`sub` -> a folder of the user's): the next member would be
    written there. The staging folder is the user's alone until the last member is out."""
    archive = place.parent.parent / "a.zip"
    archive.write_bytes(zip_bytes([("sub/a.txt", b"a"), ("sub/b.txt", b"b")]))
    modes: list[int] = []

    def seen() -> None:
        modes.append(stat.S_IMODE(unpack.temp_of(place).stat().st_mode))

    old = os.umask(0o002)
    try:
        unpack.unpack(archive, "zip", place, LIMITS, seen)
    finally:
        os.umask(old)
    assert modes and set(modes) == {0o700}
    assert stat.S_IMODE(unpack.temp_of(place).stat().st_mode) == 0o775  # the umask's, after
