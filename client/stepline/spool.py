"""An append-only file of checksummed frames: where the client puts what memory won't hold.

Each record is a 4-byte big-endian length, a 4-byte CRC-32 of the frame, then
the frame. Records are read back by offset, in any order, and checked.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from stepline.errors import Error

_HEAD = struct.Struct(">II")

Ref = tuple[int, int]  # (offset of the record, frame length)


def pack_record(frame: bytes) -> bytes:
    return _HEAD.pack(len(frame), zlib.crc32(frame)) + frame


def read_records(path: Path) -> Iterator[bytes]:
    """Every record of a file written with :func:`pack_record`, checked, in order.

    A torn last record (a crash mid-write) ends the file; damage before it raises.
    """
    data = path.read_bytes()
    pos = 0
    while pos + _HEAD.size <= len(data):
        size, crc = _HEAD.unpack_from(data, pos)
        frame = data[pos + _HEAD.size : pos + _HEAD.size + size]
        if len(frame) < size:
            return  # torn tail
        if zlib.crc32(frame) != crc:
            raise SpoolCorrupt(f"{path} is damaged at offset {pos}")
        yield frame
        pos += _HEAD.size + size


class SpoolCorrupt(Error):
    code = "spool_corrupt"


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._end = 0

    def append(self, frames: list[bytes]) -> list[Ref]:
        """Write frames at the end; return where each one is."""
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._end = 0
        refs: list[Ref] = []
        parts: list[bytes] = []
        for frame in frames:
            refs.append((self._end, len(frame)))
            parts.append(pack_record(frame))
            self._end += _HEAD.size + len(frame)
        data = b"".join(parts)
        written = os.pwrite(self._fd, data, refs[0][0]) if refs else 0
        if written != len(data):
            raise OSError(f"short write to the spool {self.path}")
        return refs

    def read(self, ref: Ref) -> bytes:
        offset, length = ref
        assert self._fd is not None
        record = os.pread(self._fd, _HEAD.size + length, offset)
        size, crc = _HEAD.unpack_from(record)
        frame = record[_HEAD.size :]
        if size != length or len(frame) != length or zlib.crc32(frame) != crc:
            raise SpoolCorrupt(f"spool {self.path} is damaged at offset {offset}")
        return frame

    def clear(self) -> None:
        """Nothing in the file is needed any more: drop it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)
