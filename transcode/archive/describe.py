"""What a stored object says about itself: its index rows, from its bytes.

Stored objects are self-describing DICOM (DESIGN.md, decision 12): from one,
the index rows ingest recorded for it can be computed again. A transcoded
object (our implementation's HTJ2K Lossless RPCL, one fragment per frame)
gives its frames rows (where each codestream starts in the file, its length
through EOC, its codestream map) and, decoding the frames, the pixel digest;
its DICOM JSON is read from its header. `verify` compares these with the
index; `rebuild` writes them into a new one.

What an object does not hold: why an instance was kept as is (the reason is
a decision about the source, recomputed in rebuild.py), and which source file
it came from (the ledger).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement

from transcode.archive.layout import check_uid
from transcode.catalog.base import SERIES_TAGS, STUDY_TAGS, FrameRow
from transcode.codecs import codestream, htj2k
from transcode.dicom.metadata import DicomJson, dicom_json
from transcode.dicom.read import Instance, open_instance
from transcode.dicom.write import IMPLEMENTATION_CLASS_UID
from transcode.digest import Digest, file_digest, frame_digest
from transcode.policy import Reason, fail
from transcode.transcoder import OUTPUT_SYNTAX

PIXEL_DATA = 0x7FE00010
_ITEM = struct.Struct("<HHI")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """The index's view of one stored object. `transcoded` objects have
    `frames` rows and a `pixel_digest`; objects kept as is have neither
    (`frames` is then empty and `frame_count` comes from the header)."""

    transcoded: bool
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    size: int
    object_digest: str
    pixel_digest: str | None
    frame_count: int
    frames: list[FrameRow]
    meta: DicomJson

    @property
    def study_json(self) -> str:
        return self.meta.text(STUDY_TAGS)

    @property
    def series_json(self) -> str:
        return self.meta.text(SERIES_TAGS)


def number_of_frames(ds: pydicom.Dataset) -> int:
    """Number of Frames of a kept image (0, none served, where it is not a number)."""
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 0


def is_transcoded(file_meta: pydicom.Dataset) -> bool:
    """Written by this implementation in the output syntax: a transcoded
    object (a kept object is a byte-exact copy of someone else's file)."""
    return (file_meta.get("TransferSyntaxUID") == OUTPUT_SYNTAX
            and file_meta.get("ImplementationClassUID") == IMPLEMENTATION_CLASS_UID)


def frame_rows(instance: Instance) -> tuple[list[FrameRow], str]:
    """The frames rows of a transcoded object, as ingest records them, and
    the digest of its decoded frames (the instance's pixel digest). Raises
    `Stop` (bad_pixel_data, decode_error) or `codestream.CodestreamError`
    for an object whose Pixel Data is not one HTJ2K codestream per frame."""
    spec = instance.spec
    element = instance.raw.get(PIXEL_DATA)
    if spec is None or not isinstance(element, RawDataElement) or not instance.explicit_le_on_disk:
        raise fail(Reason.BAD_PIXEL_DATA, "no encapsulated Pixel Data at a file offset")
    rows: list[FrameRow] = []
    digest = Digest()
    position = element.value_tell
    first = True
    while True:
        head = instance.read_at(position, _ITEM.size)
        if len(head) < _ITEM.size:
            raise fail(Reason.BAD_PIXEL_DATA, "encapsulated Pixel Data ends without a Sequence Delimiter")
        group, elem, length = _ITEM.unpack(head)
        if (group, elem) == (0xFFFE, 0xE0DD):
            break
        if (group, elem) != (0xFFFE, 0xE000):
            raise fail(Reason.BAD_PIXEL_DATA, f"expected an item at byte {position}, found ({group:04X},{elem:04X})")
        start = position + _ITEM.size
        position = start + length
        if first:  # the Basic Offset Table
            first = False
            continue
        data = instance.read_at(start, length)
        if len(data) < length:
            raise fail(Reason.BAD_PIXEL_DATA, f"frame {len(rows)} ends after the end of the file")
        index = codestream.parse(data)  # a padding byte after EOC is not part of the codestream
        try:
            pixels = htj2k.decode(data[: index.length])
        except Exception as exc:  # the codec's complaint, whatever its type
            raise fail(Reason.DECODE_ERROR, f"frame {len(rows)} cannot be decoded: {exc}") from exc
        rows.append(FrameRow(len(rows), start, index.length, index.to_dict(), frame_digest(data[: index.length], index)))
        digest.update(pixels.data)
    if len(rows) != spec.number_of_frames:
        raise fail(Reason.BAD_PIXEL_DATA, f"{len(rows)} fragments for {spec.number_of_frames} frames")
    return rows, digest.hexdigest()


def describe(path: Path) -> StoredObject:
    """The index's view of the stored object at `path`. Raises for an object
    that is not one: pydicom's errors for an unreadable header, `Stop` or
    `CodestreamError` for frames that are not what a transcoded object
    holds, `InvalidUID` for UIDs that may not name a path."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom's parser, on bytes it does not expect: any error at all
        with open_instance(path) as instance:  # as ingest read it: what the structure walk identified
            if instance.unparsed is None:
                raise
            ds = instance.dataset
    transcoded = is_transcoded(ds.file_meta)
    if transcoded:
        with open_instance(path) as instance:
            frames, pixel_digest = frame_rows(instance)
            meta = dicom_json(instance.dataset, None, instance.raw)
        count = len(frames)
    else:  # kept as is: described as ingest describes the copy it places
        meta, frames, pixel_digest = dicom_json(ds), [], None
        count = number_of_frames(ds) if "Rows" in ds else 0
    return StoredObject(
        transcoded=transcoded, sop_uid=check_uid(meta.first("00080018"), "SOP Instance UID"),
        study_uid=check_uid(meta.first("0020000D"), "Study Instance UID"),
        series_uid=check_uid(meta.first("0020000E"), "Series Instance UID"),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID), size=path.stat().st_size,
        object_digest=file_digest(path), pixel_digest=pixel_digest, frame_count=count, frames=frames, meta=meta,
    )
