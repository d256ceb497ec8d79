"""Regions of stored frames: cut-out codestreams and their pixels.

A region of a frame stored as HTJ2K is served from the tile-parts that hold
it (`codecs/region.py`), read as a few byte runs of the stored object in one
call (`Archive.read_ranges`) and checked piece by piece against the
checksums recorded at ingest (`integrity`); nothing is decoded to cut it.
Decoded pixels of a region are the cut-out decoded at its level, cropped to
the pixels that cover the region there. Frames of instances kept as is have
no tiles or levels: their regions are crops of the whole decoded frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transcode.archive.store import ByteRange
from transcode.codecs import region
from transcode.codecs.codestream import CodestreamIndex
from transcode.codecs.region import Cut
from transcode.digest import has_piece_checksums
from transcode.server.errors import Problem
from transcode.server.frames import FrameReader, StoredInstance


@dataclass(frozen=True, slots=True)
class Box:
    """A region in full-resolution pixels: top-left corner and size."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Window:
    """Where a region lies at one resolution `level` (`reductions` halvings
    below full size): pixels `left`..`right` - 1, `top`..`bottom` - 1."""

    level: int
    reductions: int
    left: int
    top: int
    right: int
    bottom: int

    @property
    def size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top


def check_box(box: Box, columns: int, rows: int) -> None:
    """400 unless `box` is a non-empty region inside a `columns` x `rows` frame."""
    if box.width < 1 or box.height < 1 or box.x < 0 or box.y < 0 or box.x + box.width > columns \
            or box.y + box.height > rows:
        raise Problem(400, "bad_region", f"the region {box.x},{box.y},{box.width},{box.height} is not inside the "
                      f"{columns}x{rows} frame (x,y,w,h in full-resolution pixels, w and h at least 1)")


def window(index: CodestreamIndex, box: Box, level: int | None) -> Window:
    """The pixels covering `box` at `level` (None: full resolution)."""
    level = index.decompositions if level is None else level
    if not 0 <= level <= index.decompositions:
        raise Problem(400, "no_such_level",
                      f"level must be 0 (lowest resolution) to {index.decompositions} (full) for this frame")
    check_box(box, index.width, index.height)
    return Window(level, index.decompositions - level,
                  *region.covering(index, box.x, box.y, box.width, box.height, level))


def cut_out(reader: FrameReader, instance: StoredInstance, number: int, box: Box, level: int | None) -> bytes:
    """The cut-out codestream of the tiles of frame `number` covering `box`
    at `level` (None: full), every byte of it checked against the checksums
    recorded at ingest."""
    if not instance.transcoded:
        raise Problem(400, "no_regions", "regions are cut only from frames stored as HTJ2K by this archive; this "
                      f"instance is kept as is in {instance.row.transfer_syntax}: ask for decoded pixels")
    return _cut(reader, instance, number, window(instance.index(number), box, level))[1]


def _cut(reader: FrameReader, instance: StoredInstance, number: int, where: Window) -> tuple[Cut, bytes]:
    index = instance.index(number)
    cut = region.plan_window(index, where.level, (where.left, where.top, where.right, where.bottom))
    recorded = instance.digests[number - 1]
    if index.tiles > 1 and (not reader.objects.checked or (recorded is not None and has_piece_checksums(recorded))):
        return cut, _from_pieces(reader, instance, number, cut, recorded)
    # One tile (the cut is the level prefix) or no tile-part checksums: the prefix, checked whole.
    prefix = memoryview(reader.stored(instance, number, None if where.level == index.decompositions else where.level))
    return cut, region.cut(cut, prefix[: index.header_length], [prefix[tp.offset:tp.end] for tp in cut.tile_parts])


def _from_pieces(reader: FrameReader, instance: StoredInstance, number: int, cut: Cut, recorded: str | None) -> bytes:
    """Read the cut's byte runs in one call and check each piece."""
    index, offset = cut.index, instance.spans[number - 1][0]
    spans = cut.spans()
    runs = reader.objects.read_ranges(instance.row, [ByteRange(offset + a, offset + b) for a, b in spans])
    at = {start: (memoryview(run), start) for (start, _), run in zip(spans, runs, strict=True)}
    pieces: list[tuple[int, memoryview]] = []
    run, base = at[0]
    pieces.append((0, run[: index.header_length]))
    for tp in cut.tile_parts:
        if tp.offset in at:
            run, base = at[tp.offset]
        pieces.append((1 + tp.part * index.tiles + tp.tile, run[tp.offset - base:tp.end - base]))
    if recorded is not None:
        reader.objects.check_pieces(instance.row, number, pieces, recorded)
    return region.cut(cut, pieces[0][1], [piece for _, piece in pieces[1:]])


def pixels(reader: FrameReader, instance: StoredInstance, number: int, box: Box, level: int | None) -> np.ndarray:
    """The decoded pixels covering `box` at `level` (rows, columns[, samples]),
    reduced levels clamped into Bits Stored as whole-frame levels are."""
    if not instance.transcoded:
        if level is not None:
            raise Problem(400, "no_levels", "resolution levels exist only for frames stored as HTJ2K")
        frame = reader.pixels(instance, number)
        check_box(box, frame.shape[1], frame.shape[0])
        return frame[box.y:box.y + box.height, box.x:box.x + box.width]
    index = instance.index(number)
    where = window(index, box, level)
    cut, data = _cut(reader, instance, number, where)
    decoded = reader.decode(instance, data, index.decompositions, where.level)
    left, top = cut.window[:2]
    return decoded[where.top - top:where.bottom - top, where.left - left:where.right - left]
