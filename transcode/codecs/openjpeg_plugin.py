"""pydicom's pylibjpeg-openjpeg decoder behind a size check (codecs/sizes.py).

The plugin for JPEG 2000 and HTJ2K sources: the same decoder pydicom would
use (OpenJPEG through pylibjpeg-openjpeg), called only once the codestream's
SIZ marker declares no more samples than the data set's frame holds. It
replaces pydicom's own J2K plugins (codecs/decode.py), so that no fallback
decodes what this one refused.
"""

from __future__ import annotations

from pydicom import uid
from pydicom.pixels.decoders import pylibjpeg
from pydicom.pixels.decoders.base import DecodeRunner

from transcode.codecs import sizes

DECODER_DEPENDENCIES = {
    ts: ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.4")
    for ts in (uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)
}


def is_available(tsyntax: str) -> bool:
    """True for JPEG 2000 and HTJ2K, where pylibjpeg-openjpeg is installed."""
    return tsyntax in DECODER_DEPENDENCIES and pylibjpeg.is_available(tsyntax)


def decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Decode one JPEG 2000 or HTJ2K frame with OpenJPEG, after the size check."""
    sizes.check(sizes.j2k_samples(src), runner)
    return pylibjpeg._decode_frame(src, runner)
