"""Write a transcoded instance: the same data set with new pixel encapsulation.

Only the changes DESIGN.md allows are made: the transfer syntax and
implementation fields of the File Meta, the Pixel Data encapsulation (one
fragment per frame, Extended Offset Table for multi-frame), Photometric
Interpretation RGB -> YBR_RCT when the colour transform is used, and
Planar Configuration 0. Every other element is written from the source's
own element, unaltered.

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from transcode import __version__
from transcode.digest import Digest, file_digest

PIXEL_DATA = 0x7FE00010
#: Encapsulation elements we (re)write; the source's copies are dropped.
ENCAPSULATION_TAGS = frozenset({0x7FE00001, 0x7FE00002, 0x7FE00003, PIXEL_DATA})
#: A UUID-derived UID (PS3.5 B.2): we have no organisation root of our own.
IMPLEMENTATION_CLASS_UID = "2.25.66366106974202226047267457464850165023"
IMPLEMENTATION_VERSION_NAME = f"TRANSCODE_{__version__}"[:16]

_ITEM = struct.Struct("<HHI")
_ITEM_TAG = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = _ITEM.pack(0xFFFE, 0xE0DD, 0)


_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


def _copies_raw(source: FileDataset) -> bool:
    """Are the source's raw elements already Explicit VR Little Endian?"""
    try:
        tsyntax = UID(source.file_meta.TransferSyntaxUID)
        return not tsyntax.is_implicit_VR and tsyntax.is_little_endian
    except (AttributeError, ValueError):
        return False


def _encode_elements(
    source: Dataset,
    raw: Mapping[BaseTag, Any],
    keep: Callable[[BaseTag], bool],
    changes: dict[str, Any],
    raw_is_explicit_le: bool,
) -> bytes:
    """Explicit VR Little Endian bytes of the source's elements for which
    `keep(tag)`, with `changes` (keyword -> value) as new elements; retired
    group lengths are left out.

    Raw elements read from an Explicit VR Little Endian source (`raw`, as
    parsed, before anything converted them) are copied byte for byte: no
    decoding and re-encoding, so they are exactly the source's bytes, and ten
    times faster than pydicom's writer. Sequences, changed elements and
    elements from other encodings go through pydicom, converted by the source
    data set, which knows their encoding.
    """
    new = {Tag(tag_for_keyword(k)): DataElement(tag_for_keyword(k), dictionary_VR(k), v) for k, v in changes.items()}
    tags = sorted({t for t in source.keys() if keep(t) and t.element != 0} | {t for t in new if keep(t)})
    out = bytearray()
    fp = DicomFileLike(BytesIO())
    fp.is_little_endian, fp.is_implicit_VR = True, False
    encodings = source._character_set
    for tag in tags:
        elem = new.get(tag) or raw.get(tag)
        if elem is None or (isinstance(elem, RawDataElement) and elem.value is None):  # deferred
            elem = source.get_item(tag)
        if (raw_is_explicit_le and isinstance(elem, RawDataElement) and elem.value is not None
                and elem.VR and elem.VR != "SQ" and elem.length != 0xFFFFFFFF):
            value, vr = elem.value, elem.VR.encode()
            if elem.VR in _LONG_VRS:
                out += struct.pack("<HH2sHI", tag.group, tag.element, vr, 0, len(value)) + value
                continue
            if len(value) <= 0xFFFF:
                out += struct.pack("<HH2sH", tag.group, tag.element, vr, len(value)) + value
                continue
        fp.parent.seek(0)
        fp.parent.truncate()
        write_data_element(fp, new.get(tag) or source[tag], encodings)
        out += fp.parent.getvalue()
    return bytes(out)


def data_set_head(
    source: FileDataset, raw: Mapping[BaseTag, Any], transfer_syntax: UID, changes: dict[str, Any],
    preamble: bytes | None,
) -> bytes:
    """Everything a Part 10 file of `source` holds before Pixel Data: the
    preamble, the File Meta for `transfer_syntax` and the source's own
    elements (encapsulation elements left out) with `changes` as new
    elements: the source data set must keep describing the source."""
    meta = _new_file_meta(source, transfer_syntax)
    return b"".join((
        preamble if preamble and len(preamble) == 128 else bytes(128),
        b"DICM",
        _encoded(lambda fp: write_file_meta_info(fp, meta, enforce_standard=True)),
        _encode_elements(source, raw, lambda tag: tag < PIXEL_DATA and tag not in ENCAPSULATION_TAGS, changes,
                         _copies_raw(source)),
    ))


def data_set_tail(source: FileDataset, raw: Mapping[BaseTag, Any]) -> bytes:
    """The source's elements after Pixel Data (trailing padding and the like)."""
    return _encode_elements(source, raw, lambda tag: tag > PIXEL_DATA, {}, _copies_raw(source))


def native_file(
    source: FileDataset, raw: Mapping[BaseTag, Any], changes: dict[str, Any], frames: Iterable[bytes], *,
    length: int, vr: str,
) -> Iterator[bytes]:
    """An Explicit VR Little Endian Part 10 file of `source`, as chunks, with
    native Pixel Data (`vr` OB or OW) made of `frames` (`length` bytes in
    all): for clients that cannot decode what is stored. One frame is in
    memory at a time."""
    yield data_set_head(source, raw, UID(ExplicitVRLittleEndian), changes, source.preamble)
    yield struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr.encode(), 0, length + (length & 1))
    sent = 0
    for frame in frames:
        sent += len(frame)
        yield frame
    if sent != length:
        raise RuntimeError(f"{sent} bytes of frames sent, {length} announced")
    if length & 1:
        yield b"\0"
    yield data_set_tail(source, raw)


def _encoded(write: Callable[[DicomFileLike], None]) -> bytes:
    """Bytes that pydicom's writer `write(fp)` produces, explicit VR LE."""
    buffer = BytesIO()
    fp = DicomFileLike(buffer)
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write(fp)
    return buffer.getvalue()


def _new_file_meta(source: FileDataset, transfer_syntax: UID) -> FileMetaDataset:
    """The source's File Meta with the new transfer syntax and our
    implementation fields. Media Storage SOP Class/Instance UIDs missing from
    the source's meta are taken from the data set, where Part 10 says they
    come from."""
    meta = FileMetaDataset()
    for elem in source.file_meta:  # new elements: the source's must keep describing the source
        meta.add(DataElement(elem.tag, elem.VR, elem.value))
    for meta_keyword, keyword in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        if not meta.get(meta_keyword) and source.get(keyword):
            setattr(meta, meta_keyword, source[keyword].value)
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


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
        source: FileDataset,
        *,
        transfer_syntax: UID,
        frames: int,
        changes: dict[str, Any],
        preamble: bytes | None,
        durable: bool = True,
        raw: Mapping[BaseTag, Any] | None = None,
    ) -> None:
        self.dst = dst
        self._source = source
        self._raw = raw or {}
        self._transfer_syntax = transfer_syntax
        self._changes = changes
        self._preamble = preamble
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
        fd, tmp = tempfile.mkstemp(dir=self.dst.parent, prefix=f".{self.dst.name}.", suffix=".partial")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._write_head()

    def _write(self, data: bytes | memoryview) -> None:
        assert self._file is not None
        self._file.write(data)
        if self._hash is not None:
            self._hash.update(data)

    def _write_head(self) -> None:
        self._write(data_set_head(self._source, self._raw, self._transfer_syntax, self._changes, self._preamble))
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
        self._write(data_set_tail(self._source, self._raw))
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


def copy_atomically(src: Path, dst: Path, *, durable: bool = True) -> str:
    """Copy `src` to `dst` byte for byte through a temporary file and a
    rename (fsynced unless `durable=False`); return the digest of the copy."""
    digest = Digest()
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
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
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()
