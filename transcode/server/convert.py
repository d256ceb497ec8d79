"""Instances as Explicit VR Little Endian, for clients that ask for it.

Instances go out as stored unless a client names another transfer syntax.
A reader without an HTJ2K decoder asks for Explicit VR Little Endian
(`transfer-syntax=1.2.840.10008.1.2.1`), the one every DICOM reader knows.
A transcoded instance is then streamed: its data set as stored, Photometric
Interpretation back to RGB where the colour transform was used (its frames
decode to RGB), and native Pixel Data decoded one frame at a time, so memory
holds one frame whatever the instance size. An instance kept as is (a lossy
or otherwise untranscoded source) goes through pydicom whole, decompressed
when it is encapsulated.

Single frames decoded for the frames resource (`native_frame`) follow the
same rule as a decompressed instance: a JPEG stored as YBR_FULL_422 decodes
to full-size pixels, which are sent as RGB (PS3.5 8.2.1: once decompressed
the data is no longer subsampled; Cornerstone3D takes native pixels of the
full size as RGB), not as the decoder's YCbCr.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from transcode.catalog.base import InstanceRow
from transcode.codecs.decode import register_plugins
from transcode.dicom.read import open_instance
from transcode.dicom.write import native_file
from transcode.server.errors import Problem
from transcode.server.frames import FrameReader, StoredInstance
from transcode.server.service import Service

log = logging.getLogger(__name__)

_LITTLE_ENDIAN_NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}


def possible(row: InstanceRow) -> bool:
    """Whether the instance can be sent as Explicit VR Little Endian: a
    transcoded one always; a kept one if it is little endian or pydicom
    has a decoder for its transfer syntax (not MPEG video, not big endian)."""
    if row.outcome == "transcoded":
        return True
    try:
        syntax = UID(row.transfer_syntax)
        if syntax in _LITTLE_ENDIAN_NATIVE:
            return True
        if not syntax.is_encapsulated:
            return False
        register_plugins()
        return bool(get_decoder(syntax).is_available)
    except (ValueError, NotImplementedError):
        return False


def native_frame(service: Service, stored: StoredInstance, number: int, *, head: bytes = b"",
                 tail: bytes = b"") -> bytes | memoryview:
    """Frame `number` as native little-endian pixel bytes, between `head`
    and `tail`: RGB for the frames of a kept instance stored as YBR_FULL_422."""
    if stored.transcoded or service.image_header(stored.row).get("PhotometricInterpretation") != "YBR_FULL_422":
        return service.reader.native(stored, number, head=head, tail=tail)
    # the decoder's full-size YCbCr (YBR_FULL) to RGB, as pydicom decompresses the whole instance
    frame = convert_color_space(service.reader.pixels(stored, number), "YBR_FULL", "RGB")
    return head + np.ascontiguousarray(frame).tobytes() + tail  # 8-bit samples: no byte order


def explicit_le(reader: FrameReader, stored: StoredInstance) -> Iterable[bytes]:
    """The instance as an Explicit VR Little Endian Part 10 file, in chunks.

    A transcoded instance streams, its frames decoded as the body is sent
    (they were proved at ingest). A kept one is converted here, at once and
    in memory, so that a decoder's refusal is a 406 with its reason rather
    than a broken response."""
    return _streamed(reader, stored) if stored.transcoded else (_whole(reader, stored),)


def _streamed(reader: FrameReader, stored: StoredInstance) -> Iterator[bytes]:
    with reader.objects.local(stored.row) as path, open_instance(path) as instance:
        spec = instance.spec
        assert spec is not None  # transcoded instances have pixels
        changes = {"PhotometricInterpretation": "RGB"} if spec.photometric == "YBR_RCT" else {}
        frames = (reader.native(stored, n) for n in range(1, stored.count + 1))
        length = spec.frame_bytes * stored.count
        yield from native_file(instance, changes, frames, length=length, vr="OW" if spec.bits_allocated > 8 else "OB")


def _whole(reader: FrameReader, stored: StoredInstance) -> bytes:
    with reader.local(stored) as path:
        return _converted(path, stored.row.sop_uid)


def _converted(path: Path, sop: str) -> bytes:
    try:
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            register_plugins()
            # Explicit VR Little Endian, YBR to RGB; the same instance (pydicom would make a new UID)
            ds.decompress(generate_instance_uid=False)
        for _ in ds.iterall():  # converts every element: implicit VRs are looked up before writing them out
            pass
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = BytesIO()
        ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except Exception as exc:  # any decoder's or the writer's complaint about the stored data
        log.warning("%s cannot be converted to Explicit VR Little Endian: %s: %s", sop, type(exc).__name__, exc)
        raise Problem(406, "not_acceptable", f"{sop} cannot be converted to Explicit VR Little Endian "
                      "(the decoders refuse its stored data; the server log says why); retrieve it as stored "
                      "(transfer-syntax=*)") from exc
    return buffer.getvalue()
