"""Content digests: BLAKE3, written as "blake3:<64 hex digits>".

Every transcoded byte is hashed twice (the source pixels, the stored object),
so the hash is on the hot path. BLAKE3 is a 256-bit cryptographic hash that
ran at 7.8 GB/s on one core of the machine of 2026-11-28 against 1.9 GB/s
for SHA-256 (with SHA-NI): with SHA-256 the digests alone took the 40-frame
benchmark from 0.58x to 0.68x of the bare codec time. (On the VM of
2026-12-07, AVX2 and no AVX-512, BLAKE3 ran at 2.4-3.3 GB/s.) The prefix
keeps stored digests self-describing should the algorithm ever change;
`b3sum` checks a stored file by hand.
Each stored frame codestream also has checksums, which the server checks on
every read: CRC-32 (libdeflate, through imagecodecs) of each prefix that ends
on a resolution level (the last is the whole frame), written
"crc32:<8 hex digits>,<8 hex digits>,...". So every byte sent, a whole frame
or a level prefix, is checked without reading or hashing more than is sent.
A tiled frame's checksums also cover its pieces, for region cut-outs that
read only some tiles (`codecs/region.py`): after a "/", the CRC-32 of the
main header, then of each tile-part in stored order. Frames indexed before
those were recorded are checked by reading their level prefix whole.
They are there to catch damage (bit rot, a short or misplaced write), which a
CRC-32 misses with odds of 2^-32 and never for a burst of up to 32 bits; not
forgery (whoever can rewrite an object can rewrite the index beside it). The
BLAKE3 object digests, which `transcode verify` checks, stay the strong
proof. Checked on every read, this hash is on the server's hot path, where
BLAKE3 cost several times as much (measured in the README, "Integrity on
read").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imagecodecs
from blake3 import blake3

from transcode.codecs.codestream import CodestreamIndex

ALGORITHM = "blake3"
FRAME_ALGORITHM = "crc32"


class Digest:
    """An incremental digest of bytes fed in order."""

    def __init__(self) -> None:
        self._hash = blake3()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed any C-contiguous buffer (an ndarray's `.data` included)."""
        self._hash.update(memoryview(data).cast("B"))  # releases the GIL for large buffers

    def hexdigest(self) -> str:
        return f"{ALGORITHM}:{self._hash.hexdigest()}"


def frame_digest(data: bytes | bytearray | memoryview, index: CodestreamIndex) -> str:
    """The checksums of frame codestream `data`'s prefixes that end on a
    resolution level (`index` says where), the last the whole codestream;
    for a tiled, resolution-major frame also those of its main header and
    each of its tile-parts."""
    ends = [index.level_end(level) for level in range(index.resolutions)] if index.resolution_major else []
    view, crc, start, values = memoryview(data), 0, 0, []
    for end in ends[:-1] + [len(data)]:
        crc = imagecodecs.deflate_crc32(view[start:end], crc)
        values.append(f"{crc:08x}")
        start = end
    digest = f"{FRAME_ALGORITHM}:{','.join(values)}"
    if index.tiles > 1 and index.resolution_major:
        pieces = [view[: index.header_length]] + [view[tp.offset : tp.end] for tp in index.tile_parts]
        digest += "/" + ",".join(f"{imagecodecs.deflate_crc32(piece):08x}" for piece in pieces)
    return digest


def _values(recorded: str) -> tuple[list[str], list[str]]:
    """The level-prefix checksums and the piece checksums (header, then
    tile-parts; empty where none were recorded) of a frame digest."""
    algorithm, _, values = recorded.partition(":")
    if algorithm != FRAME_ALGORITHM:
        raise ValueError(f"unknown frame digest algorithm {algorithm!r}")
    levels, _, pieces = values.partition("/")
    return levels.split(","), pieces.split(",") if pieces else []


def frame_digests_agree(computed: str, recorded: str | None) -> bool:
    """Whether a frame digest computed now from the stored bytes agrees with
    the `recorded` one: the same, or the same level checksums where the
    record predates tile-part checksums (an older archive, still whole)."""
    if recorded is None or computed == recorded:
        return computed == recorded
    return not _values(recorded)[1] and _values(computed)[0] == _values(recorded)[0]


def frame_prefix_matches(prefix: bytes | bytearray | memoryview, recorded: str, level: int) -> bool:
    """Whether `prefix`, the bytes of a frame up to the end of resolution
    `level` (-1: the whole frame), has the checksum `recorded` for it."""
    return f"{imagecodecs.deflate_crc32(prefix):08x}" == _values(recorded)[0][level]


def has_piece_checksums(recorded: str) -> bool:
    """Whether `recorded` holds checksums of the header and each tile-part."""
    return bool(_values(recorded)[1])


def frame_pieces_match(pieces: Sequence[tuple[int, bytes | bytearray | memoryview]], recorded: str) -> bool:
    """Whether each (number, bytes) of `pieces` has its recorded checksum:
    number 0 is the main header, k + 1 the k-th stored tile-part. Raises
    ValueError where `recorded` has no piece checksums."""
    values = _values(recorded)[1]
    if not values:
        raise ValueError("the frame digest holds no tile-part checksums")
    return all(f"{imagecodecs.deflate_crc32(data):08x}" == values[number] for number, data in pieces)


def file_digest(path: Path) -> str:
    """The digest of a whole file, read in 1 MiB chunks."""
    digest = Digest()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
