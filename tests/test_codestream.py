"""The codestream index, the .202 encoder profile and resolution prefixes."""

from __future__ import annotations

import struct

import imagecodecs
import numpy as np
import openjpeg
import pytest

from fixtures.generate import phantom
from transcode.codecs import codestream, htj2k
from transcode.codecs.codestream import CodestreamError
from transcode.codecs.htj2k import EncodeSettings

TILED = EncodeSettings(tile_threshold=256, tile_size=128)


@pytest.mark.parametrize(
    ("side", "expected"), [(1, 1), (64, 1), (65, 1), (128, 1), (129, 2), (256, 2), (2048, 5), (2049, 6), (2457, 6)]
)
def test_decompositions_are_the_fewest_that_reach_64_pixels(side: int, expected: int) -> None:
    assert htj2k.decompositions_for(side, 1) == expected
    assert htj2k.decompositions_for(1, side) == expected


@pytest.mark.parametrize(("shape", "settings"), [((300, 200), EncodeSettings()), ((300, 517), TILED)])
def test_index_matches_the_codestream(shape: tuple[int, int], settings: EncodeSettings) -> None:
    frame = phantom(*shape, bits=12, signed=False, seed=1).astype(np.uint16)
    data, index = htj2k.encode(frame, colour_transform=False, settings=settings)
    assert index == codestream.parse(data)
    assert (index.width, index.height, index.bit_depth, index.signed) == (shape[1], shape[0], 16, False)
    assert index.length == len(data) and data.endswith(b"\xff\xd9")
    assert index.tiles == (1 if settings.tile_for(shape[1], shape[0]) is None else 3 * 5)
    # Tile-parts tile the codestream exactly, each starting with SOT.
    assert index.tile_parts[0].offset == index.header_length
    for a, b in zip(index.tile_parts, index.tile_parts[1:], strict=False):
        assert a.end == b.offset
    assert all(data[tp.offset : tp.offset + 2] == b"\xff\x90" for tp in index.tile_parts)
    assert codestream.CodestreamIndex.from_dict(index.to_dict()) == index


def test_tlm_lists_the_reordered_tile_parts() -> None:
    frame = phantom(300, 517, bits=10, signed=False, seed=2).astype(np.uint16)
    data, index = htj2k.encode(frame, colour_transform=False, settings=TILED)
    start = data.index(b"\xff\x55")  # TLM in the main header
    length, _z, stlm = struct.unpack_from(">HBB", data, start + 2)
    assert stlm == 0b0110_0000
    entries = [struct.unpack_from(">HI", data, start + 6 + 6 * i) for i in range(len(index.tile_parts))]
    assert length == 4 + 6 * len(index.tile_parts)
    assert entries == [(tp.tile, tp.length) for tp in index.tile_parts]


@pytest.mark.parametrize("settings", [EncodeSettings(), TILED], ids=["untiled", "tiled"])
@pytest.mark.parametrize("shape", [(300, 517), (257, 1, 3)], ids=["grey", "colour-thin"])
def test_every_level_prefix_decodes_to_the_full_decode_at_that_level(shape, settings) -> None:
    samples = shape[2] if len(shape) == 3 else 1
    frame = phantom(shape[0], shape[1], bits=8, signed=False, seed=3, samples=samples).astype(np.uint8)
    data, index = htj2k.encode(frame, colour_transform=samples == 3, settings=settings)
    assert np.array_equal(openjpeg.decode(data), frame)  # the independent decoder reads the reordering
    for level in range(index.resolutions):
        prefix = data[: index.level_end(level)]
        expected = htj2k.decode(data, level=level, decompositions=index.decompositions)
        got = htj2k.decode(prefix, level=level, decompositions=index.decompositions)
        assert got.shape[:2] == index.resolution_size(level)[::-1]
        np.testing.assert_array_equal(got, expected)
    assert index.level_end(index.decompositions) == len(data)


def test_untiled_streams_are_already_resolution_major() -> None:
    frame = phantom(100, 90, bits=12, signed=True, seed=4)
    raw = imagecodecs.htj2k_encode(frame, reversible=True, tlm=True, tilepart=1, resolutions=1)
    index = codestream.parse(raw)
    assert index.resolution_major
    assert codestream.make_resolution_major(raw, index) == (raw, index)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-2], "no EOC"),
        (lambda d: d[: len(d) // 2], "truncated|impossible length|expected SOT"),
        (lambda d: b"\x00" + d, "no SOC"),
        (lambda d: d[:2] + b"\xff\x51\xff\xff" + d[6:], "runs past the end"),
        (lambda d: d[:100], "truncated|past the end|impossible"),
        (lambda d: b"", "no SOC"),
    ],
    ids=["no-eoc", "half", "no-soc", "bad-siz-length", "header-only", "empty"],
)
def test_malformed_codestreams_raise_codestream_error(mutate, message) -> None:
    frame = phantom(200, 200, bits=12, signed=False, seed=5).astype(np.uint16)
    data, _ = htj2k.encode(frame, colour_transform=False, settings=EncodeSettings())
    with pytest.raises(CodestreamError, match=message):
        codestream.parse(mutate(data))


@pytest.mark.parametrize(("dtype", "samples"), [(np.uint8, 3), (np.uint8, 1), (np.uint16, 1), (np.int16, 1)])
def test_reduced_levels_clamp_the_wavelet_overshoot_instead_of_wrapping(dtype, samples: int) -> None:
    """A bright square on black at full container width: the low-pass ring
    goes below 0 (above the maximum) at its edges, which OpenJPH wraps."""
    info = np.iinfo(dtype)
    shape = (192, 256, samples) if samples == 3 else (192, 256)
    frame = np.full(shape, info.min, dtype)
    frame[61:131, 77:171] = info.max
    data, index = htj2k.encode(frame, colour_transform=samples == 3, settings=EncodeSettings())
    bits = info.bits
    wrapped = 0
    for level in range(index.decompositions):
        plain = htj2k.decode(data, level=level, decompositions=index.decompositions)
        got = htj2k.decode_reduced(data, level=level, decompositions=index.decompositions, bits=bits)
        assert got.dtype == plain.dtype and got.shape == plain.shape
        differs = got != plain
        wrapped += int(differs.sum())
        # Where they differ OpenJPH wrapped the value to the far end of the range; it is clamped to the near one.
        assert np.all((got[differs] == info.min) | (got[differs] == info.max))
        far = np.abs(plain[differs].astype(np.int64) - got[differs].astype(np.int64))
        assert np.all(far > (int(info.max) - int(info.min)) // 2)
    assert wrapped  # the frame does make OpenJPH wrap, so the clamp was exercised
