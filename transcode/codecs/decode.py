"""Source decoding: which library decodes which transfer syntax.

pydicom's decoder runner does the DICOM side (frame boundaries, byte order,
planar configuration, J2K/JPEG-LS sign corrections); the codec libraries do
the bit streams. Native, deflated and RLE data use pydicom's own code; JPEG
2000 and HTJ2K go through pylibjpeg-openjpeg; JPEG and JPEG-LS through the
imagecodecs plugin registered here. Both plugins check the codestream's
declared size against the data set before decoding (codecs/sizes.py); the
OpenJPEG one replaces pydicom's J2K plugins, so nothing decodes what it refused.
Encapsulated Uncompressed (native frames, one per fragment), for which pydicom
has no decoder, has one of ours: `decoder(tsyntax)` is the one to ask.

Where a second, independent implementation exists, it is kept apart as the
*independent* decoder of that syntax, for cross-checking the source:
JPEG Lossless is decoded by libjpeg-turbo and, independently, by liblj92
(imagecodecs' `ljpeg`); RLE by pylibjpeg-rle and, independently, by
pydicom's numpy decoder. The primary decoders are pinned (pydicom's own
RLE plugin is removed from the runner), so that a frame the primary cannot
read is a decode error and never silently read by the other one.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np
from pydicom import dcmread, uid
from pydicom.encaps import encapsulate
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.pixels.decoders.base import Decoder

from transcode.codecs import imagecodecs_plugin, openjpeg_plugin, uncompressed_plugin

_PLUGIN = ("imagecodecs", ("transcode.codecs.imagecodecs_plugin", "decode_frame"))
_OPENJPEG = ("openjpeg", ("transcode.codecs.openjpeg_plugin", "decode_frame"))
#: Independent decoders, each the only plugin of a decoder of its own.
_INDEPENDENT = {
    uid.JPEGLossless: ("liblj92", ("transcode.codecs.imagecodecs_plugin", "decode_frame_ljpeg")),
    uid.JPEGLosslessSV1: ("liblj92", ("transcode.codecs.imagecodecs_plugin", "decode_frame_ljpeg")),
    uid.RLELossless: ("pydicom-numpy", ("pydicom.pixels.decoders.rle", "_decode_frame")),
}
#: Plugins removed from pydicom's runner, so that the primary decoder is the only one.
_SECOND_IN_RUNNER = {uid.RLELossless: "pydicom"}
_registered = False
_independent: dict[str, Decoder] = {}
#: Decoders of syntaxes pydicom has none for, by transfer syntax.
_OURS: dict[str, Decoder] = {}


def register_plugins() -> None:
    """Register the imagecodecs plugin with pydicom's decoders and pin the
    primary decoder of syntaxes that have an independent one, once per process."""
    global _registered
    if _registered:
        return
    for tsyntax in imagecodecs_plugin.DECODER_DEPENDENCIES:
        decoder = get_decoder(tsyntax)
        if _PLUGIN[0] not in decoder.available_plugins:
            decoder.add_plugin(*_PLUGIN)
    for tsyntax in openjpeg_plugin.DECODER_DEPENDENCIES:
        decoder = get_decoder(tsyntax)
        for label in [*decoder.available_plugins, *decoder.missing_dependencies]:
            decoder.remove_plugin(label.split(" ")[0])
        decoder.add_plugin(*_OPENJPEG)
    for tsyntax, label in _SECOND_IN_RUNNER.items():
        decoder = get_decoder(tsyntax)
        if label in decoder.available_plugins:
            decoder.remove_plugin(label)
    for tsyntax, (label, path) in _INDEPENDENT.items():
        independent = Decoder(uid.UID(tsyntax))
        independent.add_plugin(label, path)
        _independent[tsyntax] = independent
    ours = Decoder(uncompressed_plugin.ENCAPSULATED_UNCOMPRESSED)
    ours.add_plugin("fragments", ("transcode.codecs.uncompressed_plugin", "decode_frame"))
    _OURS[ours.UID] = ours
    _registered = True


def decoder(tsyntax: str) -> Decoder:
    """The primary decoder of `tsyntax`: pydicom's, with the plugins above,
    or ours where pydicom has none (raises NotImplementedError if neither)."""
    register_plugins()
    ours = _OURS.get(tsyntax)
    return ours if ours is not None else get_decoder(tsyntax)


#: The elements that can hold an image's pixels, by (group, element).
_PIXEL_KEYWORDS = {(0x7FE0, 0x0010): "PixelData", (0x7FE0, 0x0008): "FloatPixelData",
                   (0x7FE0, 0x0009): "DoubleFloatPixelData"}


def read_frame(source: BinaryIO, index: int) -> np.ndarray:
    """Frame `index` (from 0) of the Part 10 file `source`, as stored (raw:
    no colour conversion), through `decoder()`: pydicom's `pixel_array`
    reads one frame where it lies the same way, but only with pydicom's
    own decoders. Reads the header and that frame's bytes, not the others
    (a deflated data set is inflated whole: it has no offsets to seek to).
    Raises ValueError for a file whose data set ends before any pixels,
    NotImplementedError for a syntax nothing here decodes, and whatever
    the decoder raises for data it refuses."""
    ds = dcmread(source, stop_before_pixels=True)  # leaves `source` at the pixel element's tag
    tsyntax = uid.UID(ds.file_meta.TransferSyntaxUID)
    if tsyntax == uid.DeflatedExplicitVRLittleEndian:
        source.seek(0)
        whole = dcmread(source)
        return decoder(tsyntax).as_array(whole, index=index, raw=True, validate=True, **as_pixel_options(whole))[0]
    tag = source.read(8)
    order = "<" if tsyntax.is_little_endian else ">"
    keyword = _PIXEL_KEYWORDS.get(struct.unpack(f"{order}HH", tag[:4])) if len(tag) == 8 else None
    if keyword is None:
        raise ValueError("the data set holds no pixel data")
    opts = as_pixel_options(ds, transfer_syntax_uid=tsyntax, pixel_keyword=keyword)
    if not tsyntax.is_implicit_VR:
        opts["pixel_vr"] = tag[4:6].decode("ascii")
        source.read(4)  # pixel VRs have a 4-byte length after two reserved bytes
    arr, _ = decoder(tsyntax).as_array(source, index=index, raw=True, validate=True, **opts)
    return arr


def independent_name(tsyntax: str) -> str | None:
    """The independent decoder of `tsyntax` (a library name), if there is one."""
    entry = _INDEPENDENT.get(tsyntax)
    return entry[0] if entry else None


def decode_independently(tsyntax: str, codestream: bytes, **options: object) -> np.ndarray:
    """One frame's `codestream` decoded by the independent decoder of
    `tsyntax`, with the same pydicom processing as the primary decoder
    (`raw`, no correction of unused bits): arrays comparable as they are.
    `options` are pydicom's pixel options (rows, columns, bits...)."""
    register_plugins()
    arr, _ = _independent[tsyntax].as_array(
        encapsulate([codestream]), raw=True, validate=True, correct_unused_bits=False, number_of_frames=1,
        **options,
    )
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)
