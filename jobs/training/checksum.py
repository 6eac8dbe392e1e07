"""A checkpoint's checksum, kept inside the checkpoint file itself. Standard library only.

torch.save writes a zip archive. The SHA-256 of everything before the archive's comment is
written as that comment (``plan-job-sha256:<hex>``), in the same file, so it is renamed into
place with the checkpoint in one atomic step and cannot belong to another file. A zip comment
is part of the format: plain ``torch.load`` (weights_only, mmap) reads such a file as any
other. The hash is taken as torch.save writes (HashingWriter), so a save costs no second
read; verifying reads the file once more before torch.load does.

A file without the comment (written before plan-job checked checksums, or by another tool)
verifies as "unchecked", not as bad: it loads as before.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import IO, Any

PREFIX = b"plan-job-sha256:"
_DIGEST_HEX = 64
COMMENT_BYTES = len(PREFIX) + _DIGEST_HEX
_EOCD = b"PK\x05\x06"  # the zip's end-of-central-directory record
_EOCD_BYTES = 22  # its size without a comment; the comment's length is its last 2 bytes
_CHUNK = 16 * 2**20


class ChecksumMismatch(ValueError):
    """The file's bytes are not those it was saved with."""


class HashingWriter:
    """The file object torch.save writes to: passes every byte on to ``handle`` and hashes
    all but the last 22 (the zip's end record, whose comment length finish() sets)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._hash = hashlib.sha256()
        self._tail = b""  # the last bytes written, not hashed yet

    def write(self, data: Any) -> int:
        chunk = memoryview(data).cast("B")
        self._handle.write(chunk)
        if len(chunk) >= _EOCD_BYTES:
            self._hash.update(self._tail)
            self._hash.update(chunk[:-_EOCD_BYTES])
            self._tail = bytes(chunk[-_EOCD_BYTES:])
        else:
            joined = self._tail + bytes(chunk)
            self._hash.update(joined[:-_EOCD_BYTES])
            self._tail = joined[-_EOCD_BYTES:]
        return len(chunk)

    def flush(self) -> None:
        self._handle.flush()

    def finish(self) -> None:
        """Write the checksum as the zip's comment: the end record's comment length (its last
        two bytes, written as 0) becomes the comment's, and the comment follows."""
        tail = self._tail
        if len(tail) != _EOCD_BYTES or tail[:4] != _EOCD or tail[-2:] != b"\0\0":
            raise ValueError("torch.save did not end with a zip end record without a comment")
        self._hash.update(tail[:-2])
        comment = PREFIX + self._hash.hexdigest().encode("ascii")
        self._handle.flush()
        self._handle.seek(-2, os.SEEK_END)
        self._handle.write(struct.pack("<H", len(comment)) + comment)


def verify(path: Path) -> bool:
    """True when the file carries a checksum and matches it; False when it carries none.
    ChecksumMismatch when it does not match (a flipped bit, a torn or overwritten file)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size < _EOCD_BYTES + COMMENT_BYTES:
            return False
        handle.seek(size - _EOCD_BYTES - COMMENT_BYTES)
        end = handle.read(_EOCD_BYTES + COMMENT_BYTES)
        comment = end[_EOCD_BYTES:]
        if not comment.startswith(PREFIX):
            return False
        record = end[:_EOCD_BYTES]
        if record[:4] != _EOCD or struct.unpack("<H", record[-2:])[0] != COMMENT_BYTES:
            raise ChecksumMismatch("checksum mismatch (the zip's end record is damaged)")
        expected = comment[len(PREFIX) :]
        digest = hashlib.sha256()
        remaining = size - COMMENT_BYTES - 2  # everything up to the comment's length field
        handle.seek(0)
        while remaining > 0:
            block = handle.read(min(_CHUNK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    if digest.hexdigest().encode("ascii") != expected:
        raise ChecksumMismatch("checksum mismatch")
    return True
