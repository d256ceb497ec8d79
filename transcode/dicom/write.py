"""Write a transcoded instance: the same data set with new pixel encapsulation.

Only the changes DESIGN.md allows are made: the transfer syntax and
implementation fields of the File Meta, the Pixel Data encapsulation (one
fragment per frame, Extended Offset Table for multi-frame), Photometric
Interpretation RGB -> YBR_RCT when the colour transform is used, Planar
Configuration 0, and the values of the source's top-level group lengths,
recalculated (the Pixel Data group's is left out). Every other element is
written from the source's own element, unaltered.

Frames are streamed to disk as they are encoded, so memory never holds more
than a frame. The Extended Offset Table precedes Pixel Data but is only known
at the end: its fixed-size value is reserved and filled in before commit.
The file is written under a temporary name in the target folder, fsynced
and renamed: a half-written output never carries the final name.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from io import BytesIO
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_data_element
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from transcode import __version__
from transcode.dicom.elements import LONG_VRS, Encoding, explicit_le
from transcode.dicom.read import Instance
from transcode.digest import Digest, file_digest

PIXEL_DATA = 0x7FE00010
PIXEL_GROUP_LENGTH = 0x7FE00000
#: Encapsulation elements we (re)write; the source's copies are dropped.
ENCAPSULATION_TAGS = frozenset({0x7FE00001, 0x7FE00002, 0x7FE00003, PIXEL_DATA})
#: A UUID-derived UID (PS3.5 B.2): we have no organisation root of our own.
IMPLEMENTATION_CLASS_UID = "2.25.66366106974202226047267457464850165023"
IMPLEMENTATION_VERSION_NAME = f"TRANSCODE_{__version__}"[:16]

_ITEM = struct.Struct("<HHI")
_ITEM_TAG = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = _ITEM.pack(0xFFFE, 0xE0DD, 0)


def _encode_elements(instance: Instance, keep: Callable[[int], bool], changes: dict[str, Any], *,
                     from_pixel_data: bool = False) -> bytes:
    """Explicit VR Little Endian bytes of the source's elements for which
    `keep(tag)`, each with the source's value bytes (see dicom/elements.py),
    and `changes` (keyword -> value) in place of or beside them, in tag
    order; with `from_pixel_data`, the walk starts at Pixel Data where the
    file holds it there. Raises `MalformedDataSet` where that cannot be done exactly."""
    new = {}
    for keyword, value in changes.items():
        tag = tag_for_keyword(keyword)
        new[tag] = _encoded(lambda fp: write_data_element(fp, DataElement(tag, dictionary_VR(keyword), value)))
    pending = sorted(tag for tag in new if keep(tag))
    parts: list[tuple[int, bytes]] = []
    fp, start, end, encoding = _data_set_bytes(instance)
    if from_pixel_data:
        start = _pixel_data_start(instance, fp, encoding) or start
    with fp:
        representation = instance.dataset.get("PixelRepresentation", 0)
        for tag, data in explicit_le(fp, start, end, encoding, keep=keep, pixel_representation=representation):
            while pending and pending[0] < tag:
                added = pending.pop(0)
                parts.append((added, new[added]))
            if pending and pending[0] == tag:
                data = new[pending.pop(0)]
            parts.append((tag, data))
    parts += ((tag, new[tag]) for tag in pending)
    return b"".join(_group_lengths_recalculated(parts))


def _group_lengths_recalculated(parts: list[tuple[int, bytes]]) -> Iterator[bytes]:
    """The elements' bytes, each group length (gggg,0000) the source had set
    to the bytes its group now holds, as dcmtk recalculates them: retired
    (PS3.5 7.2), but the source's, and re-encoding or a changed element
    makes the old value wrong."""
    sizes: dict[int, int] = {}
    for tag, data in parts:
        if tag & 0xFFFF:
            sizes[tag >> 16] = sizes.get(tag >> 16, 0) + len(data)
    for tag, data in parts:
        yield data if tag & 0xFFFF else struct.pack("<HH2sHI", tag >> 16, 0, b"UL", 4, sizes.get(tag >> 16, 0))


def _pixel_data_start(instance: Instance, fp: BinaryIO, encoding: Encoding) -> int | None:
    """Where the Pixel Data element's header starts in `fp`, or None where
    the reader's offset does not point at it (a deflated set, say)."""
    element = instance.raw.get(PIXEL_DATA)
    if not isinstance(element, RawDataElement) or instance.transfer_syntax == DeflatedExplicitVRLittleEndian:
        return None
    start = element.value_tell - (8 if encoding.implicit else 12)  # tag, (VR, reserved,) length
    fp.seek(start)
    return start if fp.read(4) == struct.pack("<HH" if encoding.little else ">HH", 0x7FE0, 0x0010) else None


def _data_set_bytes(instance: Instance) -> tuple[BinaryIO, int, int, Encoding]:
    """A file object holding the source's data set (the file itself, or the
    inflated data set of a deflated one), where it starts and ends, and its
    encoding as the reader found it (a mislabelled data set is read as what
    it is: `Instance.mislabelled`)."""
    syntax = instance.transfer_syntax
    fp: BinaryIO = open(instance.path, "rb")
    start = instance.data_set_start
    if syntax == DeflatedExplicitVRLittleEndian:
        with fp:
            fp.seek(start)
            fp, start = BytesIO(zlib.decompressobj(-zlib.MAX_WBITS).decompress(fp.read())), 0
    return fp, start, fp.seek(0, os.SEEK_END), Encoding(implicit=syntax.is_implicit_VR, little=syntax.is_little_endian)


def data_set_head(instance: Instance, transfer_syntax: UID, changes: dict[str, Any]) -> bytes:
    """Everything a Part 10 file of `instance` holds before Pixel Data: the
    preamble, the File Meta for `transfer_syntax` and the source's own
    elements (encapsulation elements left out) with `changes` as new
    elements: the source data set must keep describing the source."""
    source = instance.dataset
    preamble = source.preamble
    elements = _verbatim_head(instance, changes)
    if elements is None:
        elements = _encode_elements(instance, _head_element, changes)
    return b"".join((
        preamble if preamble and len(preamble) == 128 else bytes(128), b"DICM", file_meta(source, transfer_syntax),
        elements,
    ))


def data_set_tail(instance: Instance) -> bytes:
    """The source's elements after Pixel Data (trailing padding and the
    like): read from Pixel Data on where its value is still on disk, not
    walked to from the start of the data set (a per-file cost)."""
    if max(map(int, instance.raw)) <= PIXEL_DATA:  # int: BaseTag compares in Python
        return b""
    return _encode_elements(instance, lambda tag: tag > PIXEL_DATA, {}, from_pixel_data=True)


def _head_element(tag: int) -> bool:
    """Written before Pixel Data: all but the encapsulation elements we
    write ourselves and the Pixel Data group's length (its value would be
    known only once the frames are written)."""
    return tag < PIXEL_DATA and tag not in ENCAPSULATION_TAGS and tag != PIXEL_GROUP_LENGTH


def _verbatim_head(instance: Instance, changes: dict[str, Any]) -> bytes | None:
    """The source's elements before Pixel Data as the source file holds
    them, read in one piece, or None where that would not be the data set
    `_encode_elements` writes: changes to make, a data set that is not
    Explicit VR Little Endian on disk, tags out of order, group lengths (to
    recalculate) or encapsulation elements (left out). Nothing is decoded
    or re-encoded, so every byte is the source's (sequences included), at
    a fixed cost whatever the header's size: 0.03 ms against 0.8 ms element
    by element for a 250-element CT header (measured here)."""
    if changes or not instance.explicit_le_on_disk:
        return None
    tags, elements = list(map(int, instance.raw)), list(instance.raw.values())  # file order
    try:
        n = tags.index(PIXEL_DATA)
    except ValueError:
        return None
    head = tags[:n]
    if not head or head != sorted(head) or not ENCAPSULATION_TAGS.isdisjoint(head):
        return None
    if any(tag < PIXEL_DATA for tag in tags[n + 1 :]):
        return None  # pydicom lists command group elements last: the walk of the file puts them where they are
    # Group lengths are recalculated element by element; no VR means pydicom
    # found implicit VR bytes under an explicit transfer syntax, which must be
    # re-encoded. (map: no Python call per element.)
    if 0 in map((0xFFFF).__and__, head) or not all(map(attrgetter("VR"), elements[:n])):
        return None
    first, pixels = elements[0], elements[n]
    if pixels.VR not in ("OB", "OW", "UN"):
        return None
    start = _value_position(first) - (12 if first.VR in LONG_VRS else 8)
    end = _value_position(pixels) - 12
    data = instance.read_at(start, end - start + 4)
    if data[:4] != struct.pack("<HH", head[0] >> 16, head[0] & 0xFFFF) or data[-4:] != b"\xe0\x7f\x10\x00":
        return None  # the offsets are not what they seemed: go element by element
    return data[:-4]


def _value_position(element: Any) -> int:
    """Where an element's value starts in the file, raw or converted."""
    return element.value_tell if isinstance(element, RawDataElement) else element.file_tell


def native_file(
    instance: Instance, changes: dict[str, Any], frames: Iterable[bytes], *, length: int, vr: str,
) -> Iterator[bytes]:
    """An Explicit VR Little Endian Part 10 file of `instance`, as chunks,
    with native Pixel Data (`vr` OB or OW) made of `frames` (`length` bytes
    in all): for clients that cannot decode what is stored. One frame is in
    memory at a time."""
    yield data_set_head(instance, UID(ExplicitVRLittleEndian), changes)
    yield struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr.encode(), 0, length + (length & 1))
    sent = 0
    for frame in frames:
        sent += len(frame)
        yield frame
    if sent != length:
        raise RuntimeError(f"{sent} bytes of frames sent, {length} announced")
    if length & 1:
        yield b"\0"
    yield data_set_tail(instance)


def _encoded(write: Callable[[DicomFileLike], None]) -> bytes:
    """Bytes that pydicom's writer `write(fp)` produces, explicit VR LE."""
    buffer = BytesIO()
    fp = DicomFileLike(buffer)
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write(fp)
    return buffer.getvalue()


#: File Meta VRs encoded here; any other goes through pydicom's writer.
_META_TEXT_VRS = frozenset({"AE", "CS", "LO", "SH", "UI", "UR"})
_REQUIRED_META = {0x00020002: "Media Storage SOP Class UID", 0x00020003: "Media Storage SOP Instance UID"}


def file_meta(source: FileDataset, transfer_syntax: UID) -> bytes:
    """The File Meta Information group for a copy of `source` in
    `transfer_syntax`: the source's own elements with the new transfer
    syntax and our implementation fields. Media Storage SOP Class/Instance
    UIDs missing from the source's meta are taken from the data set, where
    Part 10 says they come from.

    The bytes are those of pydicom's `write_file_meta_info` (a test holds
    them equal over every test file), built directly: pydicom's data set
    and validation machinery took 0.19 ms per file for seven elements."""
    values = {int(elem.tag): (elem.VR, elem.value) for elem in source.file_meta if elem.tag.element}
    for meta_tag, tag in ((0x00020002, 0x00080016), (0x00020003, 0x00080018)):
        if not values.get(meta_tag, (None, None))[1] and source.get(tag):
            values[meta_tag] = ("UI", source[tag].value)
    missing = [name for tag, name in _REQUIRED_META.items() if not values.get(tag, (None, None))[1]]
    if missing:
        raise ValueError(f"missing required File Meta Information elements: {', '.join(missing)}")
    values.setdefault(0x00020001, ("OB", b"\x00\x01"))
    values[0x00020010] = ("UI", transfer_syntax)
    values[0x00020012] = ("UI", IMPLEMENTATION_CLASS_UID)
    values[0x00020013] = ("SH", IMPLEMENTATION_VERSION_NAME)
    body = b"".join(_meta_element(tag, *values[tag]) for tag in sorted(values))
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def _meta_element(tag: int, vr: str, value: Any) -> bytes:
    """One File Meta element, Explicit VR Little Endian."""
    try:
        if vr in _META_TEXT_VRS:
            data = value.encode("ascii")
        elif vr in ("OB", "UN"):
            data = bytes(value)
        elif vr == "UL":
            data = struct.pack("<I", value)
        else:
            raise TypeError(vr)
        data += (b"\0" if vr in ("UI", "OB", "UN") else b" ") * (len(data) & 1)
        if vr in LONG_VRS:
            return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(data)) + data
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data
    except (AttributeError, TypeError, UnicodeEncodeError, struct.error):  # multi-valued, not ASCII, long: pydicom
        return _encoded(lambda fp: write_data_element(fp, DataElement(tag, vr, value)))


#: The process's file creation mask, read once at import (reading it means
#: setting it, which is not safe once threads run).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def temporary_beside(dst: Path) -> tuple[int, Path]:
    """A new temporary file in `dst`'s folder, open for writing, with the
    mode a plain `open` would give `dst` (0644 under the usual umask; mkstemp
    makes 0600, which a PACS service account reading the output could not)."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".partial")
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, Path(tmp)


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder (which makes renames into it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EncapsulatedWriter:
    """Streams an instance with encapsulated frames to `dst`, atomically.

    Use as a context manager: `add_frame` each codestream in order, then
    `commit` (optionally `finish` first); leaving the block without commit
    (an exception) removes the temporary file and leaves `dst` untouched.
    """

    def __init__(
        self,
        dst: Path,
        source: Instance,
        *,
        transfer_syntax: UID,
        frames: int,
        changes: dict[str, Any],
        durable: bool = True,
    ) -> None:
        self.dst = dst
        self._source = source
        self._transfer_syntax = transfer_syntax
        self._changes = changes
        self._durable = durable
        self._frames_expected = frames
        self._offsets: list[int] = []
        self._lengths: list[int] = []
        #: (file offset, length) of each frame's codestream, for the archive index
        self.frame_spans: list[tuple[int, int]] = []
        self._eot_at: int | None = None
        self._file: IO[bytes] | None = None
        self._digest: str | None = None
        # With several frames the offset table is filled in at the end, so the
        # digest must be taken from the finished file instead.
        self._hash = Digest() if frames == 1 else None

    def begin(self) -> None:
        """Create the temporary file and write everything before the first
        frame. Called by the first `add_frame`, or earlier by a caller that
        has a moment to spare (while the first frame is encoding)."""
        if self._file is not None:
            return
        fd, self._tmp = temporary_beside(self.dst)
        self._file = os.fdopen(fd, "wb")
        self._write_head()

    def _write(self, data: bytes | memoryview) -> None:
        assert self._file is not None
        self._file.write(data)
        if self._hash is not None:
            self._hash.update(data)

    def _write_head(self) -> None:
        self._write(data_set_head(self._source, self._transfer_syntax, self._changes))
        if self._frames_expected > 1:
            size = 8 * self._frames_expected
            self._eot_at = self._file.tell()  # type: ignore[union-attr]
            for element in (0x0001, 0x0002):  # Extended Offset Table, ... Lengths
                self._write(struct.pack("<HH2sHI", 0x7FE0, element, b"OV", 0, size))
                self._write(bytes(size))
        self._write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        self._write(_ITEM.pack(*_ITEM_TAG, 0))  # empty Basic Offset Table
        self._first_item = self._file.tell()  # type: ignore[union-attr]

    def add_frame(self, data: bytes) -> None:
        """Append one frame's codestream as a single fragment."""
        self.begin()
        assert self._file is not None
        padded = len(data) + (len(data) & 1)
        position = self._file.tell()
        self._offsets.append(position - self._first_item)
        self._lengths.append(padded)
        self.frame_spans.append((position + _ITEM.size, len(data)))
        self._write(_ITEM.pack(*_ITEM_TAG, padded))
        self._write(data)
        if padded != len(data):
            self._write(b"\x00")

    def finish(self) -> str:
        """Complete the temporary file and make it durable; return its digest
        (hashed as written, or re-read once the offset table is filled in).
        Split from `commit` so that the caller can overlap this with its last
        checks and only publish once they have passed."""
        if self._digest is not None:
            return self._digest
        if len(self._offsets) != self._frames_expected:
            raise RuntimeError(f"{len(self._offsets)} frames written, {self._frames_expected} expected")
        self._write(_SEQUENCE_DELIMITER)
        self._write(data_set_tail(self._source))
        f = self._file
        assert f is not None
        if self._eot_at is not None:
            size = 8 * self._frames_expected
            f.seek(self._eot_at + 12)
            f.write(struct.pack(f"<{self._frames_expected}Q", *self._offsets))
            f.seek(self._eot_at + 24 + size)
            f.write(struct.pack(f"<{self._frames_expected}Q", *self._lengths))
        f.flush()
        if self._durable:
            os.fsync(f.fileno())
        f.close()
        self._digest = self._hash.hexdigest() if self._hash is not None else file_digest(self._tmp)
        return self._digest

    def commit(self) -> str:
        """Give the finished file its final name, durably; return its digest."""
        digest = self.finish()
        os.replace(self._tmp, self.dst)
        if self._durable:
            fsync_path(self.dst.parent)
        return digest

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> EncapsulatedWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()


def copy_atomically(src: Path, dst: Path, *, durable: bool = True, prefix: bytes = b"", start: int = 0) -> str:
    """Copy `src` to `dst` byte for byte through a temporary file and a
    rename (fsynced unless `durable=False`); return the digest of the copy.
    With `prefix` (a preamble and File Meta built for a source that has
    none), the copy is `prefix` then the source's bytes from `start`."""
    digest = Digest()
    fd, tmp = temporary_beside(dst)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            out.write(prefix)
            digest.update(prefix)
            inp.seek(start)
            while chunk := inp.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.replace(tmp, dst)
        if durable:
            fsync_path(dst.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest()
