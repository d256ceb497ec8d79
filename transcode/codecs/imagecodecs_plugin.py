"""A pydicom 3 pixel-data decoder plugin backed by imagecodecs.

pydicom's own JPEG and JPEG-LS plugins need pylibjpeg-libjpeg (GPL-3),
GDCM or Pillow (baseline only). imagecodecs bundles libjpeg-turbo 3 (baseline,
extended 12-bit and lossless, including 16-bit lossless) and CharLS under
permissive licences, so it is the decoder we register for those syntaxes.

`decode_frame_ljpeg` is liblj92 (imagecodecs' `ljpeg`), an implementation
of lossless JPEG independent of libjpeg-turbo, used only to cross-check
sources (see decode.py).

Before decoding, the frame header (SOF) of the codestream is compared with
the data set's: a codestream declaring more samples than the header would
make the library allocate for them (a forged 30000x30000 SOF in a 64x64
image took 1.8 GB before pydicom noticed the size).

The module follows pydicom's plugin contract: `is_available(uid)`,
`DECODER_DEPENDENCIES` and a decode function that returns the frame's bytes
and tells the runner how they are laid out.
"""

from __future__ import annotations

import struct

import imagecodecs
import numpy as np
from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner

_JPEG = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
_JPEG_LOSSY = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit)
_JPEGLS = (uid.JPEGLSLossless, uid.JPEGLSNearLossless)

DECODER_DEPENDENCIES = {ts: ("imagecodecs>=2025.8",) for ts in _JPEG + _JPEGLS}
#: Start Of Frame markers: JPEG processes (not DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55.
_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})
_SOS = 0xDA


def is_available(tsyntax: str) -> bool:
    """True for the syntaxes this plugin decodes (imagecodecs is a hard dependency)."""
    return tsyntax in DECODER_DEPENDENCIES


def declared_samples(src: bytes) -> int | None:
    """Rows x columns x components as the codestream's SOF declares them, or
    None when there is no SOF before the first scan (the decoder will say why)."""
    pos = 2 if src[:2] == b"\xff\xd8" else len(src)
    while pos + 4 <= len(src):
        if src[pos] != 0xFF:
            return None
        marker = src[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack_from(">H", src, pos + 2)[0]
        if marker in _SOF and pos + 10 <= len(src):
            height, width, components = struct.unpack_from(">HHB", src, pos + 5)
            return height * width * components
        if marker == _SOS:
            return None
        pos += 2 + length
    return None


def _check_size(src: bytes, runner: DecodeRunner) -> None:
    declared = declared_samples(src)
    expected = runner.rows * runner.columns * runner.samples_per_pixel
    if declared is not None and declared > expected:
        raise ValueError(
            f"the codestream declares {declared:,} samples, the data set {runner.rows}x{runner.columns}x"
            f"{runner.samples_per_pixel}: not decoded"
        )


def _layout(arr: np.ndarray, runner: DecodeRunner) -> bytearray:
    arr = np.ascontiguousarray(arr)
    if runner.samples_per_pixel > 1:
        runner.set_option("planar_configuration", 0)
    runner.set_option("bits_allocated", arr.dtype.itemsize * 8)
    return bytearray(arr.data)  # writeable: pydicom corrects signs in place


def decode_frame_ljpeg(src: bytes, runner: DecodeRunner) -> bytearray:
    """Decode one lossless JPEG frame with liblj92 (the independent decoder)."""
    _check_size(src, runner)
    return _layout(imagecodecs.ljpeg_decode(src), runner)


def decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Decode one JPEG or JPEG-LS frame, colour-by-pixel, in the stored colour space.

    Lossless JPEG never gets a colour transform from libjpeg-turbo. For lossy
    JPEG whose Photometric Interpretation says YBR, the samples are returned
    as YCbCr so that pydicom's `raw` flag means what it says; for RGB the
    library's own marker-based choice is kept, as pydicom's Pillow plugin does.
    """
    _check_size(src, runner)
    tsyntax = runner.transfer_syntax
    if tsyntax in _JPEGLS:
        arr = imagecodecs.jpegls_decode(src)
    elif tsyntax in _JPEG_LOSSY and runner.photometric_interpretation.startswith("YBR"):
        arr = imagecodecs.jpeg8_decode(src, colorspace="YCbCr", outcolorspace="YCbCr")
    else:
        arr = imagecodecs.jpeg8_decode(src)
    return _layout(arr, runner)

