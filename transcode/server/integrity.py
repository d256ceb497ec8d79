"""Stored bytes checked against the digests recorded at ingest, on every read.

What the server sends is proved first, never assumed:

- A frame of a transcoded instance, or the prefix of it that holds
  resolution levels 0..N, is checked against the checksum recorded at ingest
  for exactly those bytes (`transcode.digest.frame_digest`): every byte sent
  is checked, and no more is read than is sent. A byte range is cut from the
  whole frame, which is checked whole.
- A whole object (instance retrieval) is checked against the object digest
  while it streams: the last chunk is held back until the digest matches, so
  a damaged object ends in a broken transfer, never in a complete-looking
  body. An object of one chunk (most single-frame instances) is proved
  before the first byte goes out.
- A region cut out of a tiled frame (`codecs/region.py`) is read as a few
  runs of its tile-parts: its main header and each tile-part read are
  checked against the checksums recorded for them at ingest. A frame
  indexed before those existed has its level prefix read and checked whole
  instead, and the cut made from it: more read, nothing unchecked.
- Objects read through the DICOM reader (instances kept as is; frames of an
  index written before frames had digests) are proved whole once per
  process and object version (`Archive.version`: a file's inode, size,
  mtime and ctime; an object's size in a store): hashing a large kept
  object on every frame request would cost more than serving it. A change
  that leaves all four as they were (bit rot under the file system) is found
  by the next process, or by `transcode verify`.

A failed check is logged at ERROR with the object's path and answered with a
`StoredDataError` (no path in the body, `Cache-Control: no-store`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset

from transcode.archive.store import Archive
from transcode.catalog.base import InstanceRow
from transcode.digest import Digest, frame_pieces_match, frame_prefix_matches
from transcode.server.errors import StoredDataError
from transcode.stores.base import ByteRange

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Set to 1 to serve without checking digests: for benchmarks (which measure
#: what the checks cost), never for a server people read images from.
UNCHECKED = "TRANSCODE_UNCHECKED_READS"
#: How many proved objects (and file states) are remembered, oldest forgotten first.
PROVED = 4096


class StoredObjects:
    """Reads of stored objects that raise `StoredDataError` instead of
    returning bytes other than those recorded at ingest."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.checked = os.environ.get(UNCHECKED) != "1"
        if not self.checked:
            log.warning("%s=1: stored bytes are served without checking their digests", UNCHECKED)
        self._proved: dict[tuple[object, ...], None] = {}  # insertion-ordered: the oldest first
        self._lock = threading.Lock()

    def read_into(self, row: InstanceRow, start: int, view: memoryview) -> None:
        """Fill `view` with the object's bytes from `start`."""
        with self._reading(row):
            self.archive.read_into(row.path, start, view)

    def read_ranges(self, row: InstanceRow, ranges: Sequence[ByteRange]) -> list[bytearray]:
        """Several byte ranges of the object in one call."""
        with self._reading(row):
            return self.archive.read_ranges(row.path, ranges)

    @contextmanager
    def _reading(self, row: InstanceRow) -> Iterator[None]:
        """Storage errors as `StoredDataError`s."""
        try:
            yield
        except EOFError:
            raise self._error(row, "object_truncated", "ends before the bytes the index records") from None
        except FileNotFoundError:
            raise self._error(row, "object_missing", "is missing") from None
        except OSError as exc:
            raise self._error(row, "object_unreadable", f"cannot be read ({exc.strerror or type(exc).__name__})") \
                from None

    def check_pieces(self, row: InstanceRow, number: int, pieces: Sequence[tuple[int, memoryview]],
                     recorded: str) -> None:
        """Pieces of frame `number` (0: its main header, k + 1: its k-th
        stored tile-part) match their `recorded` checksums."""
        if self.checked and not frame_pieces_match(pieces, recorded):
            raise self._damaged(row, number)

    def check_frame(self, row: InstanceRow, number: int, data: memoryview, recorded: str | None, level: int) -> None:
        """`data`, frame `number`'s codestream up to the end of resolution
        `level` (-1: all of it), matches its `recorded` checksums (without
        them, the whole object is proved against its digest instead)."""
        if not self.checked:
            return
        if recorded is None:
            self.check_object(row)
        elif not frame_prefix_matches(data, recorded, level):
            raise self._damaged(row, number)

    def _damaged(self, row: InstanceRow, number: int) -> StoredDataError:
        return self._error(row, "integrity_error",
                           f"frame {number} does not match the digest recorded at ingest: the stored bytes are damaged")

    def check_object(self, row: InstanceRow) -> None:
        """The whole object matches its recorded size and digest; proved
        once per process for each state of the file."""
        if not self.checked:
            return
        key = (row.path, row.size, row.object_digest, self._stamp(row))
        if key in self._proved:
            return
        for _ in self.stream(row):
            pass
        with self._lock:
            self._proved[key] = None
            while len(self._proved) > PROVED:
                del self._proved[next(iter(self._proved))]

    def stream(self, row: InstanceRow, chunk: int = CHUNK) -> Iterator[bytes]:
        """The object's recorded `row.size` bytes in chunks, checked as they
        go: the last chunk only once the whole object matched its digest."""
        hasher = Digest()
        held = b""
        for start in range(0, row.size, chunk):
            end = min(start + chunk, row.size)
            data = self._read(row, start, end)
            if len(data) < end - start:
                raise self._error(row, "object_truncated", f"has {start + len(data)} of its {row.size} bytes")
            if self.checked:
                hasher.update(data)
            if held:
                yield held
            held = data
        if self.checked and hasher.hexdigest() != row.object_digest:
            raise self._error(row, "integrity_error", "does not match the digest recorded at ingest: the stored "
                              "bytes are damaged")
        if held:
            yield held

    def _read(self, row: InstanceRow, start: int, end: int) -> bytes:
        try:
            return self.archive.read(row.path, start, end)
        except FileNotFoundError:
            raise self._error(row, "object_missing", "is missing") from None
        except OSError as exc:
            raise self._error(row, "object_unreadable", f"cannot be read ({exc.strerror or type(exc).__name__})") \
                from None

    def _stamp(self, row: InstanceRow) -> tuple[object, ...]:
        """What changes when the object is replaced or written to (`Archive.version`)."""
        with self._reading(row):
            return self.archive.version(row.path)

    @contextmanager
    def local(self, row: InstanceRow) -> Iterator[Path]:
        """`Archive.local` with storage errors as `StoredDataError`s."""
        with self._reading(row), self.archive.local(row.path) as path:
            yield path

    @contextmanager
    def open(self, row: InstanceRow) -> Iterator[BinaryIO]:
        """`Archive.open` (a seekable file; a store fetches only the ranges
        read) with storage errors as `StoredDataError`s."""
        with self._reading(row), self.archive.open(row.path) as source:
            yield source

    def header(self, row: InstanceRow) -> Dataset:
        """The object's data set without Pixel Data, read through the
        archive (a store fetches only the header's bytes); StoredDataError
        when the object is missing or ends inside its header."""
        with self.open(row) as source:
            return pydicom.dcmread(source, stop_before_pixels=True)

    def _error(self, row: InstanceRow, reason: str, what: str) -> StoredDataError:
        where = self.archive.root / row.path if self.archive.root is not None else row.path
        log.error("%s: stored object of instance %s %s (%s)", where, row.sop_uid, what, reason)
        return StoredDataError(reason, f"the stored object of instance {row.sop_uid} {what}; nothing of it was "
                               "sent. The archive needs repair (see `transcode verify`).")
