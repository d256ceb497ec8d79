"""Region cut-outs: the tiles of a stored codestream that cover a region.

A stored frame is tiled and resolution-major (DESIGN.md, decision 3), so the
tile-parts holding resolutions 0..L of the tiles that cover a rectangle are
a handful of byte runs of the stored codestream. `plan` says which; `cut`
joins them, behind a rewritten main header, into a codestream of its own
that any JPEG 2000 decoder reads, with no decoding on the server:

- SIZ: the image area becomes the union of the chosen tiles on the
  reference grid (XOsiz/YOsiz at its top-left corner, Xsiz/Ysiz at its
  bottom-right one) and the tile grid starts there too (XTOsiz/YTOsiz), so
  every tile keeps its place on the reference grid. The wavelet transform of
  a tile depends on its coordinates on that grid (the parity of its edges at
  each level), so keeping them is what makes each tile decode to exactly the
  pixels it has in the whole frame.
- SOT: tiles are renumbered for the new grid (row-major); TNsot says how
  many tile-parts the tile now has (levels 0..L).
- TLM lists the tile-parts kept; progression, coding style and every other
  marker segment stay as stored.

At resolution level L (r = D - L reductions of the frame's D), a point x of
the reference grid is column ceil(x / 2^r) (T.800 B.5): the cut-out decodes
to the window `Cut.window` of the whole frame's decode at that level.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from transcode.codecs.codestream import EOC, SIZ, CodestreamError, CodestreamIndex, TilePart, with_tlm

_SIZ_GRID = struct.Struct(">IIII")  # Xsiz, Ysiz, XOsiz, YOsiz at SIZ + 6
_SIZ_TILE_OFFSET = struct.Struct(">II")  # XTOsiz, YTOsiz at SIZ + 30


def _ceil_shift(value: int, shift: int) -> int:
    return -(-value >> shift)


@dataclass(frozen=True, slots=True)
class Cut:
    """Which tiles (columns `left`..`right`-1, rows `top`..`bottom`-1 of the
    stored tile grid) and levels (0..`level`) of the frame `index` describes
    a cut-out holds."""

    index: CodestreamIndex
    level: int
    left: int
    top: int
    right: int
    bottom: int

    @property
    def reductions(self) -> int:
        """How many times the cut-out's level is halved from full size."""
        return self.index.decompositions - self.level

    @property
    def area(self) -> tuple[int, int, int, int]:
        """The chosen tiles' union on the reference grid (x0, y0, x1, y1)."""
        i = self.index
        return (self.left * i.tile_width, self.top * i.tile_height,
                min(self.right * i.tile_width, i.width), min(self.bottom * i.tile_height, i.height))

    @property
    def window(self) -> tuple[int, int, int, int]:
        """Where the cut-out's pixels lie in the whole frame decoded at
        `level` (left, top, right, bottom; right and bottom exclusive)."""
        r = self.reductions
        return tuple(_ceil_shift(v, r) for v in self.area)  # type: ignore[return-value]

    @property
    def tiles(self) -> list[int]:
        """Stored tile indexes kept, in the order of the new grid."""
        columns = self.index.tiles_x
        return [row * columns + col for row in range(self.top, self.bottom) for col in range(self.left, self.right)]

    @property
    def tile_parts(self) -> list[TilePart]:
        """The stored tile-parts kept, in codestream order (level-major,
        then tile: the stored order, a subsequence of it)."""
        index = self.index
        return [index.tile_parts[part * index.tiles + tile] for part in range(self.level + 1) for tile in self.tiles]

    def spans(self) -> list[tuple[int, int]]:
        """Byte runs of the stored codestream to read (start, end), the main
        header first, runs that touch merged: one read per run."""
        runs: list[tuple[int, int]] = [(0, self.index.header_length)]
        for tp in self.tile_parts:
            if runs[-1][1] == tp.offset:
                runs[-1] = (runs[-1][0], tp.end)
            else:
                runs.append((tp.offset, tp.end))
        return runs

    @property
    def length(self) -> int:
        """Stored bytes the cut-out is made of (main header included)."""
        return sum(end - start for start, end in self.spans())


def plan(index: CodestreamIndex, x: int, y: int, width: int, height: int, level: int | None = None) -> Cut:
    """The cut-out of the tiles covering the region (`x`, `y`, `width`,
    `height` in full-resolution pixels) up to resolution `level` (None:
    full). Raises ValueError for a region not inside the frame or a level
    out of range, CodestreamError for a codestream that is not
    resolution-major (no cut-out can be made without decoding)."""
    level = index.decompositions if level is None else level
    if not 0 <= level <= index.decompositions:
        raise ValueError(f"resolution level {level} outside 0..{index.decompositions}")
    if width < 1 or height < 1 or x < 0 or y < 0 or x + width > index.width or y + height > index.height:
        raise ValueError(f"region {x},{y},{width},{height} is not inside the {index.width}x{index.height} frame")
    if not index.resolution_major:
        raise CodestreamError("tile-parts are not resolution-major: no region can be cut out")
    tw, th = index.tile_width, index.tile_height
    return Cut(index, level, x // tw, y // th, -(-(x + width) // tw), -(-(y + height) // th))


def covering(index: CodestreamIndex, x: int, y: int, width: int, height: int, level: int) -> tuple[int, int, int, int]:
    """The pixels of the frame at resolution `level` that cover the region
    (`x`, `y`, `width`, `height` at full resolution): (left, top, right,
    bottom), right and bottom exclusive, never empty."""
    r = index.decompositions - level
    level_width, level_height = index.resolution_size(level)
    return (min(x >> r, level_width - 1), min(y >> r, level_height - 1),
            _ceil_shift(x + width, r), _ceil_shift(y + height, r))


def plan_window(index: CodestreamIndex, level: int, window: tuple[int, int, int, int]) -> Cut:
    """The cut-out whose decode at `level` holds `window` (left, top, right,
    bottom in pixels of that level): the tiles holding those samples,
    whose reference-grid positions are multiples of 2^(D - level)."""
    left, top, right, bottom = window
    r = index.decompositions - level
    x0, y0 = left << r, top << r
    return plan(index, x0, y0, ((right - 1) << r) + 1 - x0, ((bottom - 1) << r) + 1 - y0, level)


def cut(plan: Cut, header: bytes | bytearray | memoryview, parts: Sequence[bytes | bytearray | memoryview]) -> bytes:
    """The cut-out codestream from the stored main `header` and the stored
    tile-parts `parts` (those of `plan.tile_parts`, in that order)."""
    kept = plan.tile_parts
    if len(parts) != len(kept):
        raise ValueError(f"{len(parts)} tile-parts given for a cut-out of {len(kept)}")
    renumber = {tile: new for new, tile in enumerate(plan.tiles)}
    out = with_tlm(header, [(renumber[tp.tile], tp.length) for tp in kept])
    siz = _siz_offset(out)
    x0, y0, x1, y1 = plan.area
    _SIZ_GRID.pack_into(out, siz + 6, x1, y1, x0, y0)
    _SIZ_TILE_OFFSET.pack_into(out, siz + 30, x0, y0)
    for tp, data in zip(kept, parts, strict=True):
        start = len(out)
        out += data
        if len(data) != tp.length:
            raise ValueError(f"tile-part of tile {tp.tile} is {len(data)} bytes, the index says {tp.length}")
        struct.pack_into(">H", out, start + 4, renumber[tp.tile])  # Isot
        out[start + 11] = plan.level + 1  # TNsot: the tile-parts the tile has here
    out += struct.pack(">H", EOC)
    return bytes(out)


def cut_from(data: bytes | bytearray | memoryview, plan: Cut) -> bytes:
    """`cut` from a whole stored codestream held in memory."""
    view = memoryview(data)
    return cut(plan, view[: plan.index.header_length], [view[tp.offset:tp.end] for tp in plan.tile_parts])


def _siz_offset(header: bytearray) -> int:
    """Where SIZ starts: always right after SOC (T.800 A.5)."""
    if struct.unpack_from(">H", header, 2)[0] != SIZ:
        raise CodestreamError("SIZ does not follow SOC")
    return 2
