"""HTJ2K encoding with the DICOM "HTJ2K Lossless RPCL" profile (PS3.5 A.4.6).

Profile of transfer syntax 1.2.840.10008.1.2.4.202: reversible 5/3 wavelet,
RPCL progression, a TLM marker, and enough decompositions that the lowest
resolution is at most 64 pixels on its larger side. One tile-part per
resolution makes every resolution boundary a byte offset. Large frames are
tiled and their tile-parts reordered resolution-major, so a prefix of the
codestream is still a complete low-resolution image (DESIGN.md, decision 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import imagecodecs
import numpy as np

from transcode.codecs import codestream
from transcode.codecs.codestream import CodestreamIndex

#: Lowest resolution level must fit in this many pixels (PS3.5 A.4.6).
LOWEST_RESOLUTION_MAX = 64


#: Default cap on one decoded frame: 128 MiB admits an 8192x8192 16-bit frame,
#: a 4096x5120 16-bit mammogram (40 MiB), a 2457x1890 tomosynthesis frame
#: (8.9 MiB) and a 6000x7000 RGB photograph (120 MiB).
MAX_FRAME_BYTES = 128 << 20


@dataclass(frozen=True, slots=True)
class EncodeSettings:
    """Which frames are transcoded, and when and how large frames are tiled.

    `max_frame_bytes` bounds the work one instance can ask for: a frame whose
    decoded size (rows x columns x samples x container bytes, from the
    header) exceeds it is kept as is before anything is decoded. Transcoding
    a frame holds several copies of it at once (source, encoder buffers,
    verification and cross-check decodes), so a forged 30000x30000 header in
    a small file would otherwise take gigabytes (benchmarks/bounds.py).

    1024-pixel tiles (benchmarks/tile_size.py, this machine): against an
    untiled frame they cost +0.04% bytes and 1-5% codec time on 2457x1890 and
    4096x4096 frames, where 512-pixel tiles cost +0.13-0.18% bytes and, on
    4096x4096, 15% more encode and 28% more decode time (64 tiles). A 1024
    tile is still well under a viewer's region of interest at full size.
    """

    tile_threshold: int = 2048
    tile_size: int = 1024
    max_frame_bytes: int = MAX_FRAME_BYTES

    def tile_for(self, width: int, height: int) -> tuple[int, int] | None:
        if max(width, height) > self.tile_threshold:
            return (self.tile_size, self.tile_size)
        return None


def decompositions_for(width: int, height: int) -> int:
    """The fewest decompositions (at least one) that bring the larger side
    of the lowest resolution to at most 64 pixels."""
    side = max(width, height)
    levels = 1
    while -(-side // (1 << levels)) > LOWEST_RESOLUTION_MAX:
        levels += 1
    return levels


def encode(frame: np.ndarray, *, colour_transform: bool, settings: EncodeSettings) -> tuple[bytes, CodestreamIndex]:
    """Encode one frame (rows, columns[, samples]) losslessly at its container
    width; return the codestream and its index (resolution-major if tiled)."""
    height, width = frame.shape[:2]
    data = imagecodecs.htj2k_encode(
        frame,
        reversible=True,
        tlm=True,
        tilepart=imagecodecs.HTJ2K.TILEPART.RESOLUTIONS,
        resolutions=decompositions_for(width, height),
        tile=settings.tile_for(width, height),
        rgb=colour_transform,
    )
    index = codestream.parse(data)
    return codestream.make_resolution_major(data, index)


def decode(data: bytes, *, level: int | None = None, decompositions: int = 0) -> np.ndarray:
    """Decode with OpenJPH to (rows, columns[, samples]), optionally only up
    to resolution `level`."""
    skip = 0 if level is None else decompositions - level
    return imagecodecs.htj2k_decode(data, planar=False, skipres=skip)


def decode_reduced(data: bytes | bytearray, *, level: int, decompositions: int, bits: int) -> np.ndarray:
    """Resolution `level` (below full) decoded with its values clamped into
    the range of `bits` bits (Bits Stored), in the container type a decode
    of the codestream gives.

    A reduced level's low-pass values overshoot the stored range near sharp
    edges (the 5/3 wavelet rings), and OpenJPH writes each sample modulo its
    container, so an 8-bit -3 becomes 253: a white dot on a black edge. No
    value says which were wrapped, so the decoder is told one bit more of
    depth in the main header (SIZ), which changes only the output container
    and the DC level shift of unsigned samples (T.800 G.1.2; reversible
    quantisation takes its bit-planes from QCD, not SIZ): it then writes the
    true values, which are shifted back and clamped."""
    siz = 2  # SIZ follows SOC
    components = int.from_bytes(data[siz + 38 : siz + 40], "big")
    ssiz = data[siz + 40]
    depth, signed = (ssiz & 0x7F) + 1, bool(ssiz & 0x80)
    wide = bytearray(data)
    for c in range(components):
        wide[siz + 40 + 3 * c] += 1
    values = decode(bytes(wide), level=level, decompositions=decompositions).astype(np.int64)
    if not signed:
        values -= 1 << (depth - 1)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    container = np.dtype(f"{'i' if signed else 'u'}{1 if depth <= 8 else 2 if depth <= 16 else 4}")
    return np.clip(values, low, high).astype(container)

