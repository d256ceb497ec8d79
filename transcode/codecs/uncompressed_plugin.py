"""A pydicom 3 pixel-data decoder plugin for Encapsulated Uncompressed
Explicit VR Little Endian (1.2.840.10008.1.2.1.98, PS3.5 A.4.11).

That syntax holds native little-endian pixels, one frame per fragment (a
fragment of odd length padded with one byte), so that a frame can be found
without reading the others. It is lossless by definition, but pydicom 3.0
has no decoder for it. This plugin hands each fragment, checked against the
frame length the data set declares, to pydicom's runner, which lays it out
as it does native pixels (byte order, planar configuration).

The module follows pydicom's plugin contract: `is_available(uid)`,
`DECODER_DEPENDENCIES` and a decode function that returns the frame's bytes.
"""

from __future__ import annotations

from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import UID

ENCAPSULATED_UNCOMPRESSED = UID("1.2.840.10008.1.2.1.98")

DECODER_DEPENDENCIES = {ENCAPSULATED_UNCOMPRESSED: ()}


def is_available(tsyntax: str) -> bool:
    """True for the one syntax this plugin decodes (it needs no library)."""
    return tsyntax == ENCAPSULATED_UNCOMPRESSED


def decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """One frame: the fragment's bytes, less a padding byte. A fragment of
    any other length than the frame's is an error, not a guess."""
    if runner.bits_allocated % 8:
        # 1-bit frames: whether each starts on a byte boundary is not for us to guess.
        raise ValueError(f"Bits Allocated {runner.bits_allocated} in Encapsulated Uncompressed frames is not decoded")
    length = int(runner.frame_length(unit="bytes"))
    if len(src) not in (length, length + length % 2):
        raise ValueError(f"a fragment of {len(src)} bytes holds a frame of {length} bytes "
                         "(Encapsulated Uncompressed: one frame per fragment)")
    return bytearray(src[:length])  # writeable: pydicom corrects signs in place
