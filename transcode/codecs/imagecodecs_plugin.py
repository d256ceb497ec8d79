"""A pydicom 3 pixel-data decoder plugin backed by imagecodecs.

pydicom's own JPEG and JPEG-LS plugins need pylibjpeg-libjpeg (GPL-3),
GDCM or Pillow (baseline only). imagecodecs bundles libjpeg-turbo 3 (baseline,
extended 12-bit and lossless, including 16-bit lossless) and CharLS under
permissive licences, so it is the decoder we register for those syntaxes.

`decode_frame_ljpeg` is liblj92 (imagecodecs' `ljpeg`), an implementation
of lossless JPEG independent of libjpeg-turbo, used only to cross-check
sources (see decode.py).

Before decoding, the frame header (SOF) of the codestream is compared with
the data set's (codecs/sizes.py): a 30000x30000 SOF in a 64x64 image took
1.8 GB before pydicom noticed the size.

The module follows pydicom's plugin contract: `is_available(uid)`,
`DECODER_DEPENDENCIES` and a decode function that returns the frame's bytes
and tells the runner how they are laid out.
"""

from __future__ import annotations

import imagecodecs
import numpy as np
from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner

from transcode.codecs import sizes

_JPEG = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
_JPEG_LOSSY = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit)
_JPEGLS = (uid.JPEGLSLossless, uid.JPEGLSNearLossless)

DECODER_DEPENDENCIES = {ts: ("imagecodecs>=2025.8",) for ts in _JPEG + _JPEGLS}


def is_available(tsyntax: str) -> bool:
    """True for the syntaxes this plugin decodes (imagecodecs is a hard dependency)."""
    return tsyntax in DECODER_DEPENDENCIES


def _layout(arr: np.ndarray, runner: DecodeRunner) -> bytearray:
    arr = np.ascontiguousarray(arr)
    if runner.samples_per_pixel > 1:
        runner.set_option("planar_configuration", 0)
    runner.set_option("bits_allocated", arr.dtype.itemsize * 8)
    return bytearray(arr.data)  # writeable: pydicom corrects signs in place


def decode_frame_ljpeg(src: bytes, runner: DecodeRunner) -> bytearray:
    """Decode one lossless JPEG frame with liblj92 (the independent decoder)."""
    sizes.check(sizes.jpeg_samples(src), runner)
    return _layout(imagecodecs.ljpeg_decode(src), runner)


def decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Decode one JPEG or JPEG-LS frame, colour-by-pixel, in the stored colour space.

    Lossless JPEG never gets a colour transform from libjpeg-turbo. For lossy
    JPEG whose Photometric Interpretation says YBR, the samples are returned
    as YCbCr so that pydicom's `raw` flag means what it says; for RGB the
    library's own marker-based choice is kept, as pydicom's Pillow plugin does.
    """
    sizes.check(sizes.jpeg_samples(src), runner)
    tsyntax = runner.transfer_syntax
    if tsyntax in _JPEGLS:
        arr = imagecodecs.jpegls_decode(src)
    elif tsyntax in _JPEG_LOSSY and runner.photometric_interpretation.startswith("YBR"):
        arr = imagecodecs.jpeg8_decode(src, colorspace="YCbCr", outcolorspace="YCbCr")
    else:
        arr = imagecodecs.jpeg8_decode(src)
    return _layout(arr, runner)

