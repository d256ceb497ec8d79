"""Region cut-outs: two decoders read them as the matching window of the frame.

OpenJPH (imagecodecs.htj2k_decode, which can stop at a resolution level)
decodes each cut-out at its level and must give exactly the window
`Cut.window` of the whole frame decoded at that level. OpenJPEG (through
imagecodecs.jpeg2k_decode, which always decodes every level present) must
give exactly the matching area of the whole frame's level prefix, decoded
the same way: at full resolution that is the source window itself.
pylibjpeg-openjpeg 2.6 is not used here: its wrapper sizes the output as
Xsiz x Ysiz, ignoring the image offsets a cut-out has.
"""

from __future__ import annotations

import struct

import imagecodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transcode.codecs import codestream, htj2k, region
from transcode.codecs.codestream import CodestreamError
from transcode.codecs.htj2k import EncodeSettings
from transcode.phantom import phantom

EOC = b"\xff\xd9"


def encoded(rows: int, columns: int, tile: int, samples: int = 1, seed: int = 1) -> tuple[np.ndarray, bytes,
                                                                                            codestream.CodestreamIndex]:
    bits, dtype = (8, np.uint8) if samples == 3 else (12, np.uint16)
    frame = phantom(rows, columns, bits=bits, signed=False, seed=seed, samples=samples).astype(dtype)
    data, index = htj2k.encode(frame, colour_transform=samples == 3,
                               settings=EncodeSettings(tile_threshold=tile - 1, tile_size=tile))
    return frame, data, index


def check_cut(frame: np.ndarray, data: bytes, index: codestream.CodestreamIndex,
              box: tuple[int, int, int, int], level: int) -> None:
    cut = region.plan(index, *box, level)
    out = region.cut_from(data, cut)
    left, top, right, bottom = cut.window
    x0, y0, x1, y1 = cut.area
    # The tiles cover the region asked for, and no more than one tile beyond it on each side.
    x, y, w, h = box
    assert x0 <= x < x0 + index.tile_width and x1 - index.tile_width < x + w <= x1
    assert y0 <= y < y0 + index.tile_height and y1 - index.tile_height < y + h <= y1
    whole = htj2k.decode(data, level=level, decompositions=index.decompositions)
    got = htj2k.decode(out, level=level, decompositions=index.decompositions)
    assert got.shape[:2] == (bottom - top, right - left)
    np.testing.assert_array_equal(got, whole[top:bottom, left:right])
    prefix = data[: index.level_end(level)] + (EOC if level < index.decompositions else b"")
    independent = imagecodecs.jpeg2k_decode(out)  # OpenJPEG, all levels present
    np.testing.assert_array_equal(independent, imagecodecs.jpeg2k_decode(prefix)[y0:y1, x0:x1])
    if level == index.decompositions:
        np.testing.assert_array_equal(independent, frame[y0:y1, x0:x1])


@pytest.mark.parametrize(("rows", "columns", "tile"), [(301, 517, 64), (256, 256, 64), (130, 70, 32), (97, 203, 128)])
def test_every_level_of_corner_edge_and_middle_regions(rows: int, columns: int, tile: int) -> None:
    frame, data, index = encoded(rows, columns, tile)
    boxes = [
        (0, 0, 1, 1),  # top-left corner tile
        (columns - 1, rows - 1, 1, 1),  # bottom-right corner: a partial tile on odd sizes
        (columns - 1, 0, 1, rows),  # the right edge column of tiles
        (columns // 3, rows // 3, max(1, columns // 3), max(1, rows // 3)),  # the middle
        (0, 0, columns, rows),  # the whole frame
    ]
    for level in range(index.resolutions):
        for box in boxes:
            check_cut(frame, data, index, box, level)


def test_colour_frames_cut_with_their_colour_transform() -> None:
    frame, data, index = encoded(150, 190, 64, samples=3)
    assert index.colour_transform
    for level in range(index.resolutions):
        check_cut(frame, data, index, (70, 65, 60, 20), level)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(17, 200), columns=st.integers(17, 200), tile=st.sampled_from([16, 32, 48]),
       data=st.data())
def test_any_region_at_any_level(rows: int, columns: int, tile: int, data: st.DataObject) -> None:
    frame, stream, index = encoded(rows, columns, tile, seed=rows * columns)
    x = data.draw(st.integers(0, columns - 1))
    y = data.draw(st.integers(0, rows - 1))
    w = data.draw(st.integers(1, columns - x))
    h = data.draw(st.integers(1, rows - y))
    check_cut(frame, stream, index, (x, y, w, h), data.draw(st.integers(0, index.decompositions)))


def test_a_single_tile_frame_cuts_to_its_level_prefix() -> None:
    frame, data, index = encoded(300, 200, 4096)
    assert index.tiles == 1
    cut = region.plan(index, 10, 10, 5, 5, 1)
    assert cut.spans() == [(0, index.level_end(1))]
    check_cut(frame, data, index, (10, 10, 5, 5), 1)


def test_cut_rewrites_siz_sot_and_tlm() -> None:
    _, data, index = encoded(301, 517, 64)  # 9 x 5 tiles
    cut = region.plan(index, 130, 70, 100, 60, 2)  # tile columns 2..3, rows 1..2
    assert (cut.left, cut.top, cut.right, cut.bottom) == (2, 1, 4, 3)
    out = region.cut_from(data, cut)
    xsiz, ysiz, xo, yo, xt, yt, xto, yto = struct.unpack_from(">8I", out, 8)  # SIZ follows SOC; Xsiz after Lsiz and Rsiz
    assert (xo, yo, xsiz, ysiz) == (128, 64, 256, 192) and (xto, yto) == (128, 64) and (xt, yt) == (64, 64)
    assert cut.tiles == [1 * 9 + 2, 1 * 9 + 3, 2 * 9 + 2, 2 * 9 + 3]
    sots = [i for i in range(len(out) - 1) if out[i:i + 2] == b"\xff\x90"]
    kept = cut.tile_parts
    tiles = [struct.unpack_from(">HIBB", out, at + 4) for at in sots[: len(kept)]]
    assert [(t, psot, part, parts) for t, psot, part, parts in tiles] == [
        (new % 4, tp.length, tp.part, 3) for new, tp in enumerate(kept)]
    tlm = out.index(b"\xff\x55")
    entries = [struct.unpack_from(">HI", out, tlm + 6 + 6 * i) for i in range(len(kept))]
    assert entries == [(i % 4, tp.length) for i, tp in enumerate(kept)]
    assert out.endswith(EOC) and len(out) - sots[0] == sum(tp.length for tp in kept) + 2


def test_spans_merge_touching_tile_parts_and_count_only_what_is_kept() -> None:
    _, data, index = encoded(256, 256, 64)  # 4 x 4 tiles
    whole_row = region.plan(index, 0, 64, 256, 64, index.decompositions)
    # One run per level for a full row of tiles, the header merged with nothing (row 1, not 0).
    assert len(whole_row.spans()) == 1 + index.resolutions
    one = region.plan(index, 64, 64, 64, 64, index.decompositions)
    assert one.length == index.header_length + sum(tp.length for tp in index.tile_parts if tp.tile == 5)
    assert len(region.cut_from(data, one)) < len(data) // 8


@pytest.mark.parametrize("box", [(-1, 0, 5, 5), (0, 0, 0, 5), (250, 0, 10, 5), (0, 0, 256, 257)])
def test_regions_outside_the_frame_are_refused(box: tuple[int, int, int, int]) -> None:
    _, _, index = encoded(256, 256, 64)
    with pytest.raises(ValueError, match="not inside"):
        region.plan(index, *box)
    with pytest.raises(ValueError, match="level"):
        region.plan(index, 0, 0, 1, 1, index.decompositions + 1)


def test_a_stream_that_is_not_resolution_major_cannot_be_cut() -> None:
    frame = phantom(200, 200, bits=12, signed=False, seed=2).astype(np.uint16)
    raw = imagecodecs.htj2k_encode(frame, reversible=True, tlm=True, tilepart=imagecodecs.HTJ2K.TILEPART.RESOLUTIONS,
                                   resolutions=2, tile=(64, 64))
    with pytest.raises(CodestreamError, match="resolution-major"):
        region.plan(codestream.parse(raw), 0, 0, 10, 10)
