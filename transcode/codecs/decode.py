"""Source decoding: which library decodes which transfer syntax.

pydicom's decoder runner does the DICOM side (frame boundaries, byte order,
planar configuration, J2K/JPEG-LS sign corrections); the codec libraries do
the bit streams. Native, deflated and RLE data use pydicom's own code; JPEG
2000 and HTJ2K go through pylibjpeg-openjpeg; JPEG and JPEG-LS through the
imagecodecs plugin registered here.
"""

from __future__ import annotations

from pydicom.pixels import get_decoder

from transcode.codecs import imagecodecs_plugin

_PLUGIN = ("imagecodecs", ("transcode.codecs.imagecodecs_plugin", "decode_frame"))
_registered = False


def register_plugins() -> None:
    """Register the imagecodecs plugin with pydicom's decoders, once per process."""
    global _registered
    if _registered:
        return
    for tsyntax in imagecodecs_plugin.DECODER_DEPENDENCIES:
        decoder = get_decoder(tsyntax)
        if _PLUGIN[0] not in decoder.available_plugins:
            decoder.add_plugin(*_PLUGIN)
    _registered = True
