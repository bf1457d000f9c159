"""Bounds on what an archive can make the unpacker allocate before a member is checked.

`zipfile.ZipFile` reads the whole central directory into a list when it opens a zip,
`tarfile` reads an extended header (pax, a GNU long name) whole in one read of the size the
archive declares, and an LZMA decoder allocates the dictionary the stream's header asks for
(up to 4 GiB, for an archive of a hundred bytes). All are decided by the archive's author,
so all are checked here first: the central directory is walked entry by entry (its count
claimed in the end record is not trusted), a tar stream refuses any one read above
MAX_READ, an xz stream is decoded with liblzma's memory limit, and a zip member compressed
with LZMA has its dictionary size read from its header.
"""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

from dsm.errors import ArchiveError

BLOCK = 1 << 20
# One read of a tar stream: a member's data comes in reads of at most BLOCK (unpack), a
# header in one read; real extended headers are a few KiB.
MAX_READ = 4 << 20

Stream = BinaryIO | io.BufferedIOBase  # a file, or a decompressing one (gzip, bz2)
MEMBERS_VAR = "DSM_EXTRACT_MAX_MEMBERS"
MEMORY_VAR = "DSM_EXTRACT_MAX_MEMORY"

# The zip records read here (APPNOTE 4.3): signature first, little-endian.
_END = struct.Struct("<4s4H2LH")  # sig, disk, cd disk, entries here, entries, cd size, offset
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")  # ..., entries here, entries, cd size, cd offset
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # a central directory entry's fixed part
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # a member's local header
_MAX_COMMENT = 0xFFFF


def _end_record(fp: BinaryIO) -> tuple[int, int, int] | None:
    """(entries claimed, central directory size, where it starts) from the end record, found
    as zipfile finds it (the last signature in the file's last 64 KiB); None: no zip."""
    size = fp.seek(0, io.SEEK_END)
    tail_at = max(0, size - _END.size - _MAX_COMMENT)
    fp.seek(tail_at)
    tail = fp.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END.size:
        return None
    end = _END.unpack_from(tail, at)
    entries, cd_size, where = end[4], end[5], tail_at + at
    if at >= _END64_LOCATOR.size + _END64.size:
        locator = _END64_LOCATOR.unpack_from(tail, at - _END64_LOCATOR.size)
        if locator[0] == b"PK\x06\x07":  # ZIP64: its own record, just before the locator
            where -= _END64_LOCATOR.size + _END64.size
            end64 = _END64.unpack_from(tail, at - _END64_LOCATOR.size - _END64.size)
            if end64[0] == b"PK\x06\x06":
                entries, cd_size = end64[7], end64[8]
    return entries, cd_size, where - cd_size


def check_zip_entries(archive: Path, limit: int) -> None:
    """ArchiveError when the zip's central directory holds more than `limit` entries, by the
    end record's count or by walking the entries themselves (a count can lie): before
    zipfile builds its list of them. A damaged directory is left for zipfile to report."""
    with archive.open("rb") as fp:
        end = _end_record(fp)
        if end is None:
            return
        entries, cd_size, start = end
        if entries > limit:
            raise ArchiveError(
                f"refused: the zip's central directory lists {entries} members, more than "
                f"{limit} ({MEMBERS_VAR})"
            )
        if start < 0:
            return
        fp.seek(start)
        walked, seen = 0, 0
        while walked + _ENTRY.size <= cd_size:
            head = fp.read(_ENTRY.size)
            if len(head) < _ENTRY.size or head[:4] != b"PK\x01\x02":
                return
            seen += 1
            if seen > limit:
                raise ArchiveError(
                    f"refused: the zip's central directory holds more than {limit} members "
                    f"({MEMBERS_VAR}), though its end record says {entries}"
                )
            fields = _ENTRY.unpack(head)
            skip = fields[12] + fields[13] + fields[14]  # name, extra field, comment
            fp.seek(skip, io.SEEK_CUR)
            walked += _ENTRY.size + skip


def check_zip_member(fp: BinaryIO, info: zipfile.ZipInfo, max_memory: int) -> None:
    """ArchiveError when an LZMA member's header asks for a dictionary of more than
    `max_memory` bytes (`fp`: the archive, read raw; the decoder would allocate it)."""
    if info.compress_type != zipfile.ZIP_LZMA:
        return
    fp.seek(info.header_offset)
    local = fp.read(_LOCAL.size)
    if len(local) < _LOCAL.size:
        return  # zipfile says what is wrong
    fields = _LOCAL.unpack(local)
    fp.seek(fields[10] + fields[11], io.SEEK_CUR)  # name, extra field
    head = fp.read(9)  # version (2), properties' size (2), lc/lp/pb (1), dictionary size (4)
    if len(head) == 9 and (dict_size := int.from_bytes(head[5:9], "little")) > max_memory:
        raise ArchiveError(
            f"member {info.filename!r}: refused: its LZMA dictionary of {dict_size} bytes is "
            f"more than {max_memory} ({MEMORY_VAR})"
        )


class CappedReads:
    """A tar stream for `tarfile.open(fileobj=..., mode="r:")` that refuses any one read
    above MAX_READ: tarfile reads a pax header or GNU long name whole, at the size the
    archive declares (512 MiB of one name from a 2 MiB tar.gz held 4 GiB of memory)."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def read(self, size: int) -> bytes:
        if size > MAX_READ:
            raise ArchiveError(
                f"refused: a header of {size} bytes (a pax header or a GNU long name), "
                f"more than {MAX_READ}"
            )
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def write(self, data: bytes) -> int:
        raise io.UnsupportedOperation("read only")

    def close(self) -> None:
        """Nothing: the stream's owner closes it."""


class XZReader(io.RawIOBase):
    """An .xz stream decoded under liblzma's memory limit (lzma.LZMAFile takes none): a
    stream whose header asks for more is ArchiveError. Seeks forward by decoding, backward by
    starting over, as LZMAFile does; concatenated streams are read one after the other.
    `fp`, the archive, stays open: its owner closes it."""

    def __init__(self, fp: Stream, memlimit: int) -> None:
        super().__init__()
        self._fp = fp
        self._memlimit = memlimit
        self._pos = 0
        self._dec = self._decoder()

    def _decoder(self) -> lzma.LZMADecompressor:
        return lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=self._memlimit)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        with memoryview(buffer) as view:
            data = self._decoded(len(view))
            view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos}[whence] + offset
        if target < self._pos:
            self._fp.seek(0)
            self._dec, self._pos = self._decoder(), 0
        while self._pos < target and (n := len(self._decoded(min(BLOCK, target - self._pos)))):
            self._pos += n
        return self._pos

    def _decoded(self, size: int) -> bytes:
        """Up to `size` decoded bytes; b"" at the end of the last stream."""
        while True:
            if self._dec.eof:  # a next stream, or padding and garbage: ignored as LZMAFile does
                raw = self._dec.unused_data or self._fp.read(BLOCK)
                if not raw:
                    return b""
                self._dec = self._decoder()
                try:
                    data = self._decompress(raw, size)
                except lzma.LZMAError:
                    return b""
            elif self._dec.needs_input:
                raw = self._fp.read(BLOCK)
                if not raw:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                data = self._decompress(raw, size)
            else:
                data = self._decompress(b"", size)
            if data:
                return data

    def _decompress(self, raw: bytes, size: int) -> bytes:
        try:
            return self._dec.decompress(raw, size)
        except lzma.LZMAError as exc:
            # liblzma's LZMA_MEMLIMIT_ERROR; CPython words it "Memory usage limit exceeded"
            # (3.11) or "... was reached" (later).
            if "memory usage limit" in str(exc).lower():
                raise ArchiveError(
                    f"refused: decoding the xz stream needs more than {self._memlimit} bytes "
                    f"of memory (its LZMA dictionary; {MEMORY_VAR})"
                ) from None
            raise
