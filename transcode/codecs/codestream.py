"""JPEG 2000 / HTJ2K codestream index and tile-part surgery.

The index says where every tile-part of a codestream starts and ends, and so
where each resolution level ends once the tile-parts are resolution-major.
It is computed once, when a frame is written, and is the type the archive
stores and the server reads: nobody parses a codestream twice to serve it.

Only marker segments are read (main header, SOT); entropy-coded data is
never touched, so parsing costs microseconds whatever the frame size.
Marker layouts follow ITU-T T.800 (ISO/IEC 15444-1) Annex A.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

SOC = 0xFF4F
CAP = 0xFF50
SIZ = 0xFF51
COD = 0xFF52
TLM = 0xFF55
SOT = 0xFF90
SOD = 0xFF93
EOC = 0xFFD9

PROGRESSIONS = ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")
_TLM_ENTRY = struct.Struct(">HI")  # Ttlm (16 bits), Ptlm (32 bits)
_TLM_MAX_ENTRIES = (0xFFFF - 4) // _TLM_ENTRY.size


class CodestreamError(ValueError):
    """The bytes are not a JPEG 2000 codestream this module can index."""


@dataclass(frozen=True, slots=True)
class TilePart:
    """One tile-part: `tile` index, `part` (TPsot) and its byte span."""

    tile: int
    part: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class CodestreamIndex:
    """Coding parameters and tile-part map of one codestream.

    Resolution levels are numbered from 0 (the lowest, the DWT's LL band)
    to `decompositions` (the full frame), the way a progressive viewer
    fetches them.
    """

    width: int
    height: int
    components: int
    bit_depth: int
    signed: bool
    tile_width: int
    tile_height: int
    decompositions: int
    progression: str
    reversible: bool
    colour_transform: bool
    high_throughput: bool
    has_tlm: bool
    header_length: int
    length: int
    tile_parts: tuple[TilePart, ...]

    @property
    def tiles_x(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def tiles_y(self) -> int:
        return -(-self.height // self.tile_height)

    @property
    def tiles(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def resolutions(self) -> int:
        return self.decompositions + 1

    def resolution_size(self, level: int) -> tuple[int, int]:
        """Width and height of the whole frame at resolution `level`."""
        self._check_level(level)
        scale = 1 << (self.decompositions - level)
        return -(-self.width // scale), -(-self.height // scale)

    @property
    def resolution_major(self) -> bool:
        """True when tile-part k of every tile holds resolution k and all
        tiles' level k come before any tile's level k + 1: then every
        level boundary is a prefix of the codestream."""
        expected = [
            (part, tile) for part in range(self.resolutions) for tile in range(self.tiles)
        ]
        return [(tp.part, tp.tile) for tp in self.tile_parts] == expected

    def level_end(self, level: int) -> int:
        """Length of the prefix that holds resolution levels 0..`level`; the
        full level's prefix is the whole codestream, EOC included."""
        self._check_level(level)
        if not self.resolution_major:
            raise CodestreamError("tile-parts are not resolution-major: no prefix per level")
        if level == self.decompositions:
            return self.length
        return self.tile_parts[(level + 1) * self.tiles - 1].end

    def _check_level(self, level: int) -> None:
        if not 0 <= level <= self.decompositions:
            raise ValueError(f"resolution level {level} outside 0..{self.decompositions}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the archive index."""
        d = {name: getattr(self, name) for name in self.__slots__ if name != "tile_parts"}
        d["tile_parts"] = [[tp.tile, tp.part, tp.offset, tp.length] for tp in self.tile_parts]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodestreamIndex:
        fields = dict(d)
        fields["tile_parts"] = tuple(TilePart(*row) for row in d["tile_parts"])
        return cls(**fields)


def _u16(buf: memoryview, pos: int) -> int:
    return (buf[pos] << 8) | buf[pos + 1]


def _segments(buf: memoryview, header_only: bool = False) -> tuple[dict[int, list[tuple[int, int]]], int]:
    """Marker segments of the main header as {marker: [(start, end)]}, and
    the offset of the first SOT (where the header ends; with `header_only`,
    `buf` is the main header alone and may end there)."""
    if len(buf) < 4 or _u16(buf, 0) != SOC:
        raise CodestreamError("no SOC marker: not a JPEG 2000 codestream")
    segments: dict[int, list[tuple[int, int]]] = {}
    pos = 2
    while True:
        if header_only and pos == len(buf):
            return segments, pos
        if pos + 4 > len(buf):
            raise CodestreamError("main header truncated before the first tile-part")
        marker = _u16(buf, pos)
        if marker == SOT:
            return segments, pos
        if marker >> 8 != 0xFF:
            raise CodestreamError(f"expected a marker at byte {pos}, found 0x{marker:04X}")
        end = pos + 2 + _u16(buf, pos + 2)
        if end > len(buf):
            raise CodestreamError(f"marker 0x{marker:04X} at byte {pos} runs past the end")
        segments.setdefault(marker, []).append((pos, end))
        pos = end


def _tile_parts(buf: memoryview, pos: int) -> tuple[list[TilePart], int]:
    """Walk the SOT chain from `pos`; return the tile-parts and the total
    codestream length (through EOC)."""
    parts: list[TilePart] = []
    while True:
        if pos + 2 > len(buf):
            raise CodestreamError("codestream truncated: no EOC marker")
        marker = _u16(buf, pos)
        if marker == EOC:
            return parts, pos + 2
        if marker != SOT or pos + 12 > len(buf):
            raise CodestreamError(f"expected SOT or EOC at byte {pos}, found 0x{marker:04X}")
        tile, psot, tpsot = struct.unpack_from(">HIB", buf, pos + 4)
        if psot == 0:  # last tile-part: runs up to EOC
            psot = len(buf) - 2 - pos
        if psot < 14 or pos + psot > len(buf):
            raise CodestreamError(f"tile-part at byte {pos} has impossible length {psot}")
        parts.append(TilePart(tile, tpsot, pos, psot))
        pos += psot


def parse(data: bytes | bytearray | memoryview) -> CodestreamIndex:
    """Index a complete codestream. Raises CodestreamError on anything that
    is not one (truncation, a bad marker, lengths pointing past the end)."""
    buf = memoryview(data).cast("B")
    segments, header_length = _segments(buf)
    if SIZ not in segments or COD not in segments:
        raise CodestreamError("main header lacks SIZ or COD")
    siz = segments[SIZ][0][0]
    xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = struct.unpack_from(">8IH", buf, siz + 6)
    if csiz < 1 or siz + 40 + 3 * csiz > segments[SIZ][0][1] or xt == 0 or yt == 0:
        raise CodestreamError("SIZ marker is malformed")
    if xo or yo or xto or yto:
        raise CodestreamError("image or tile offsets other than 0 are not supported")
    ssiz = buf[siz + 40]
    cod = segments[COD][0][0]
    progression, _layers, mct, decompositions = struct.unpack_from(">BHBB", buf, cod + 5)
    transform = buf[cod + 13]
    if progression >= len(PROGRESSIONS):
        raise CodestreamError(f"unknown progression order {progression}")
    tile_parts, length = _tile_parts(buf, header_length)
    if not tile_parts:
        raise CodestreamError("codestream holds no tile-part")
    return CodestreamIndex(
        width=xsiz,
        height=ysiz,
        components=csiz,
        bit_depth=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        tile_width=min(xt, xsiz),
        tile_height=min(yt, ysiz),
        decompositions=decompositions,
        progression=PROGRESSIONS[progression],
        reversible=transform == 1,
        colour_transform=bool(mct),
        high_throughput=CAP in segments,
        has_tlm=TLM in segments,
        header_length=header_length,
        length=length,
        tile_parts=tuple(tile_parts),
    )


def _tlm_segments(entries: list[tuple[int, int]]) -> bytes:
    """TLM marker segments (Ttlm 16 bits, Ptlm 32 bits) for `entries`."""
    out = bytearray()
    for z, start in enumerate(range(0, len(entries), _TLM_MAX_ENTRIES)):
        chunk = entries[start : start + _TLM_MAX_ENTRIES]
        if z > 255:
            raise CodestreamError("too many tile-parts for TLM (more than 256 segments)")
        out += struct.pack(">HHBB", TLM, 4 + _TLM_ENTRY.size * len(chunk), z, 0b0110_0000)
        for entry in chunk:
            out += _TLM_ENTRY.pack(*entry)
    return bytes(out)


def with_tlm(header: bytes | bytearray | memoryview, entries: list[tuple[int, int]]) -> bytearray:
    """The main `header` (SOC up to the first SOT) with its TLM segments
    replaced by ones listing `entries` (tile index, tile-part length), put
    where the first TLM was (or at the end of the header)."""
    buf = memoryview(header).cast("B")
    segments, _ = _segments(buf, header_only=True)
    tlm_spans = segments.get(TLM, [])
    insert_at = tlm_spans[0][0] if tlm_spans else len(buf)
    out = bytearray()
    pos = 0
    for start, end in tlm_spans:
        out += buf[pos:start]
        pos = end
    out += buf[pos:]
    out[insert_at:insert_at] = _tlm_segments(entries)
    return out


def make_resolution_major(data: bytes, index: CodestreamIndex) -> tuple[bytes, CodestreamIndex]:
    """Reorder tile-parts so that all tiles' resolution 0 comes first, then
    all tiles' resolution 1, and so on, and rewrite TLM to match.

    Needs exactly one tile-part per resolution per tile (the encoder's
    RESOLUTIONS division). Tile-parts of one tile keep their order, which
    is all T.800 asks of interleaved tile-parts. Returns the new bytes and
    their index; the input is returned unchanged if it is already in order.
    """
    if index.resolution_major:
        return data, index
    if len(index.tile_parts) != index.tiles * index.resolutions:
        raise CodestreamError(
            f"{len(index.tile_parts)} tile-parts for {index.tiles} tiles x "
            f"{index.resolutions} resolutions: not one tile-part per resolution"
        )
    order = sorted(index.tile_parts, key=lambda tp: (tp.part, tp.tile))
    buf = memoryview(data)
    out = with_tlm(buf[: index.header_length], [(tp.tile, tp.length) for tp in order])
    for tp in order:
        start = len(out)
        out += buf[tp.offset : tp.end]
        struct.pack_into(">I", out, start + 6, tp.length)  # Psot 0 must not move
    out += struct.pack(">H", EOC)
    return bytes(out), parse(out)
