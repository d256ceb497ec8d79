"""What a codestream says it decodes to, read from its header before decoding.

Decoders allocate for the frame their codestream declares, whatever the
data set says: a 2 MB file whose 64x64 header holds a 12000x12000 JPEG 2000
codestream took 760 MB and 10 s before pydicom noticed the size. The decoder
plugins registered here (codecs/decode.py) refuse a codestream that declares
more samples than the data set's frame holds, before decoding it.
"""

from __future__ import annotations

import struct

from pydicom.pixels.decoders.base import DecodeRunner

#: JPEG Start Of Frame markers (not DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55.
_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})
_SOS = 0xDA
#: JPEG 2000 SOC + SIZ markers; a JP2 file wraps the codestream in boxes.
_J2K_START = b"\xff\x4f\xff\x51"
_JP2_SEARCH = 4096


def jpeg_samples(src: bytes) -> int | None:
    """Rows x columns x components as a JPEG or JPEG-LS SOF declares them,
    or None when there is no SOF before the first scan (the decoder will say why)."""
    pos = 2 if src[:2] == b"\xff\xd8" else len(src)
    while pos + 4 <= len(src):
        if src[pos] != 0xFF:
            return None
        marker = src[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF and pos + 10 <= len(src):
            height, width, components = struct.unpack_from(">HHB", src, pos + 5)
            return height * width * components
        if marker == _SOS:
            return None
        pos += 2 + struct.unpack_from(">H", src, pos + 2)[0]
    return None


def j2k_samples(src: bytes) -> int | None:
    """Image width x height x components as a JPEG 2000 SIZ marker declares
    them (HTJ2K included), or None without one near the start."""
    at = src.find(_J2K_START, 0, _JP2_SEARCH)
    if at < 0 or at + 42 > len(src):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", src, at + 8)
    (components,) = struct.unpack_from(">H", src, at + 40)
    return max(xsiz - xosiz, 0) * max(ysiz - yosiz, 0) * components


def check(declared: int | None, runner: DecodeRunner) -> None:
    """Raise ValueError if the codestream declares more samples than the
    data set's frame (rows x columns x samples per pixel) holds."""
    expected = runner.rows * runner.columns * runner.samples_per_pixel
    if declared is not None and declared > expected:
        raise ValueError(
            f"the codestream declares {declared:,} samples, the data set {runner.rows}x{runner.columns}x"
            f"{runner.samples_per_pixel}: not decoded"
        )
