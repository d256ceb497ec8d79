"""Frames of archived instances: stored bytes, level prefixes, decoded pixels.

A transcoded instance has a frames row per frame (byte offset, length and
codestream index inside the stored object), so its frames and their
resolution-level prefixes are byte ranges read without parsing the file.
An instance kept as is (lossy source, 32-bit) has no frames rows: its
frames are read through the DICOM reader, walking to the frame asked for.
Every read is checked against the digests recorded at ingest (see
`integrity`): a damaged, short or missing object raises `StoredDataError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import UID

from transcode import logs
from transcode.archive.store import Archive
from transcode.catalog.base import InstanceRow
from transcode.codecs import htj2k
from transcode.codecs.codestream import CodestreamIndex
from transcode.codecs.decode import read_frame
from transcode.dicom.read import Instance, open_instance
from transcode.server.cache import Key, ReadCache
from transcode.server.errors import Problem
from transcode.server.integrity import StoredObjects

EOC = b"\xff\xd9"

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _parsed_index(recorded: str) -> CodestreamIndex:
    """A recorded codestream index, parsed once while it is in use (a
    request reads it two or three times; the text is the key, and the same
    string object each time, so its hash is computed once)."""
    return CodestreamIndex.from_dict(json.loads(recorded))


@dataclass(frozen=True)
class StoredInstance:
    """One archived instance as the server sees it: its index row (without
    its DICOM JSON, which can be large: servers cache these) and its frames
    rows (none for instances kept as is), codestream indexes parsed only for
    the frames a request touches."""

    row: InstanceRow
    bits_stored: int
    bits_allocated: int
    spans: tuple[tuple[int, int], ...]  # (offset, length) of each frame in the object
    _indexes: tuple[str, ...]
    digests: tuple[str | None, ...]  # of each frame's codestream (None: indexed before frames had digests)

    @classmethod
    def from_rows(cls, row: InstanceRow, frames: list[tuple[int, int, int, str, str | None]]) -> StoredInstance:
        """From the instance's row and its frames rows (number, offset,
        length, codestream index as JSON, digest)."""
        meta = json.loads(row.dicom_json)
        stored, allocated = (meta.get(tag, {}).get("Value", [16])[0] for tag in ("00280101", "00280100"))
        return cls(dataclasses.replace(row, dicom_json=""), int(stored), int(allocated),
                   tuple((o, ln) for _, o, ln, _, _ in frames), tuple(cs for *_, cs, _ in frames),
                   tuple(d for *_, d in frames))

    @property
    def count(self) -> int:
        return self.row.frames

    @property
    def transcoded(self) -> bool:
        return bool(self.spans)

    def index(self, number: int) -> CodestreamIndex:
        """The codestream index of 1-based frame `number` of a transcoded instance."""
        return _parsed_index(self._indexes[number - 1])

    def content(self, numbers: list[int]) -> list[str]:
        """The recorded digests that what frames `numbers` hold derives from
        (an ETag's input): their own, or the object's where they have none."""
        if not self.transcoded:
            return [self.row.object_digest]
        return [self.digests[n - 1] or self.row.object_digest for n in numbers]


def _cache_key(instance: StoredInstance, offset: int) -> Key:
    """The read cache's key of the run at `offset` in the instance's object
    (its path and recorded digest: another version has another key)."""
    return instance.row.path, instance.row.object_digest, offset


class FrameReader:
    """Reads frames of stored instances from an archive; with `cache`, the
    frames of transcoded instances read from it are kept (`server.cache`)."""

    def __init__(self, archive: Archive, cache: ReadCache | None = None) -> None:
        self.archive = archive
        self.objects = StoredObjects(archive)
        self.cache = cache
        # CPU-bound work (decoding, rendering) runs on at most one thread per
        # core at a time: more threads than cores only contend for them and
        # for the GIL, and rates fell with more clients (benchmarks/decoded_rendered.py).
        self.compute = threading.BoundedSemaphore(os.cpu_count() or 1)

    def check(self, instance: StoredInstance, numbers: list[int]) -> None:
        bad = [n for n in numbers if not 1 <= n <= instance.count]
        if bad:
            raise Problem(404, "no_such_frame",
                          f"frame {bad[0]} does not exist: the instance has {instance.count} frame(s)")

    def stored(self, instance: StoredInstance, number: int, level: int | None = None, *,
               head: bytes = b"", tail: bytes = b"") -> bytes | memoryview:
        """Frame `number` (1-based) as stored; for a transcoded frame and a
        `level`, only the prefix holding resolution levels 0..level, plus
        the two-byte EOC marker that ends a codestream (a complete
        codestream, which OpenJPEG reads too). `head` and `tail` (multipart
        framing) are put around it in the same buffer, the frame read in
        place (or copied from the read cache): one copy of the bytes, not
        three. What is read is checked against the checksum recorded for it
        before it is returned, a cached run too."""
        if instance.transcoded:
            offset, length, end = self._run(instance, number, level)
            closing = EOC if end < length else b""
            view = memoryview(bytearray(len(head) + end + len(closing) + len(tail)))
            view[:len(head)] = head
            frame = view[len(head):len(head) + end]
            key = _cache_key(instance, offset)
            cached = self.cache.get(key, end) if self.cache is not None else None
            if cached is None:
                self.objects.read_into(instance.row, offset, frame)
            else:
                frame[:] = memoryview(cached)[:end]
            self.objects.check_frame(instance.row, number, frame, instance.digests[number - 1],
                                     -1 if end == length else level)
            if self.cache is not None and cached is None:
                self.cache.put(key, bytes(frame))  # checked: only proved bytes are kept
            view[len(head) + end:] = closing + tail
            return view
        if level is not None:
            raise Problem(400, "no_levels", "resolution levels exist only for frames stored as HTJ2K")
        if self._encapsulated(instance):
            with self._open(instance) as source:
                data = next(itertools.islice(source.codestreams(), number - 1, None))
        else:
            data = self.native(instance, number)
        return head + data + tail

    def cached(self, instance: StoredInstance, number: int, level: int | None = None) -> bool:
        """Whether `stored(instance, number, level)` would take the frame
        from the read cache, not from the archive (a request that needs no
        round trip to an object store)."""
        if self.cache is None or not instance.transcoded or not 1 <= number <= len(instance.spans):
            return False  # (a frame that does not exist is answered 404 by `check`, on the thread pool)
        offset, _, end = self._run(instance, number, level)
        return self.cache.get(_cache_key(instance, offset), end) is not None

    def _run(self, instance: StoredInstance, number: int, level: int | None) -> tuple[int, int, int]:
        """A transcoded frame's offset in its object, its length, and how
        many of its bytes `level` needs (all of them for None)."""
        offset, length = instance.spans[number - 1]
        return offset, length, length if level is None else self._level_end(instance, number, level)

    def _level_end(self, instance: StoredInstance, number: int, level: int) -> int:
        index = instance.index(number)
        if not 0 <= level <= index.decompositions:
            raise Problem(400, "no_such_level",
                          f"level must be 0 (lowest resolution) to {index.decompositions} (full) for this frame")
        return index.level_end(level)

    def pixels(self, instance: StoredInstance, number: int, level: int | None = None) -> np.ndarray:
        """Frame `number` decoded: (rows, columns[, samples]); for a
        transcoded frame optionally only up to resolution `level`, which
        reads and decodes only that level's prefix.

        A reduced level's values are clamped into the range of Bits Stored
        (`htj2k.decode_reduced`), as OpenJPEG does, so previews show no
        speckles."""
        if instance.transcoded:
            index = instance.index(number)
            return self.decode(instance, self.stored(instance, number, level), index.decompositions, level)
        return self._kept_pixels(instance, number)

    def decode(self, instance: StoredInstance, data: bytes | memoryview, decompositions: int,
               level: int | None) -> np.ndarray:
        """A codestream of one of `instance`'s frames (or a cut-out of one)
        decoded up to `level`, clamped into Bits Stored below full size."""
        with self.compute:
            if level is None or level == decompositions:
                return htj2k.decode(data, level=level, decompositions=decompositions)
            return htj2k.decode_reduced(bytes(data), level=level, decompositions=decompositions,
                                        bits=instance.bits_stored)

    def native(self, instance: StoredInstance, number: int, *, head: bytes = b"",
               tail: bytes = b"") -> bytes | memoryview:
        """Frame `number` as Explicit VR Little Endian pixel bytes, with
        `head` and `tail` around them in the same buffer. A transcoded frame
        is decoded straight into that buffer (on a little-endian machine):
        no copy of the pixels is made on the way to the response."""
        if instance.bits_allocated == 1:  # bit-packed across frame boundaries: no per-frame bytes here
            raise Problem(501, "one_bit_frames", "frames of 1-bit images are not served; retrieve the instance, "
                          "or /rendered")
        if not instance.transcoded or sys.byteorder != "little":
            return head + little_endian(self.pixels(instance, number)) + tail
        index = instance.index(number)
        shape = (index.height, index.width, index.components)[:3 if index.components > 1 else 2]
        dtype = htj2k.decoded_dtype(index)
        size = math.prod(shape) * dtype.itemsize
        body = memoryview(bytearray(len(head) + size + len(tail)))
        body[:len(head)], body[len(head) + size:] = head, tail
        data = self.stored(instance, number)
        with self.compute:
            htj2k.decode(data, out=np.frombuffer(body[len(head):len(head) + size], dtype).reshape(shape))
        return body

    @contextlib.contextmanager
    def local(self, instance: StoredInstance) -> Iterator[Path]:
        """The object as a local file (`Archive.local`: the file itself, or
        a temporary copy of an object in a store), proved whole against its
        digest (once per process and object version), for the DICOM reader
        to walk."""
        self.objects.check_object(instance.row)
        with self.objects.local(instance.row) as path:
            yield path

    @contextlib.contextmanager
    def _open(self, instance: StoredInstance) -> Iterator[Instance]:
        with self.local(instance) as path, open_instance(path) as source:
            yield source

    def _encapsulated(self, instance: StoredInstance) -> bool:
        try:
            return UID(instance.row.transfer_syntax).is_encapsulated
        except ValueError:  # a transfer syntax pydicom does not know
            raise Problem(501, "unsupported_transfer_syntax",
                          f"frames stored as {instance.row.transfer_syntax} cannot be served; retrieve the "
                          "whole instance") from None

    def _kept_pixels(self, instance: StoredInstance, number: int) -> np.ndarray:
        """A frame of an instance kept as is, through the source decoders
        (which also read float and 1-bit pixels the transcoder keeps): that
        frame only, read where it lies (from a store, only its ranges),
        after the whole object was proved once against its digest."""
        self._encapsulated(instance)  # refuses unknown transfer syntaxes with a reason
        self.objects.check_object(instance.row)
        with self.objects.open(instance.row) as source, logs.reading(instance.row.path):
            try:
                return read_frame(source, number - 1)
            except Exception as exc:  # any decoder's complaint about the stored data
                log.warning("frame %d of %s cannot be decoded: %s: %s", number, instance.row.path,
                            type(exc).__name__, exc)
                raise Problem(500, "cannot_decode", f"frame {number} of the stored object cannot be decoded "
                              "(the server log says why)") from exc


def little_endian(frame: np.ndarray) -> bytes:
    """Pixel bytes in little-endian order (DICOM's native byte order)."""
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()
