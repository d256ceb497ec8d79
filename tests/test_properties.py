"""Property tests: any representable pixel format round-trips bit-exactly.

Sources are native (Explicit VR Little Endian): the other source syntaxes are
covered file by file in test_transcode_corpus.py and test_fixtures.py, and
pydicom's RLE encoder, the one a generator here would use, garbles some tiny
or sub-8-bit frames itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian

from fixtures.generate import Spec, dataset
from tests.helpers import assert_pixels_equal, assert_profile_202, output_indexes
from transcode import Outcome, transcode_file
from transcode.codecs.htj2k import EncodeSettings

#: A low threshold so that tiling is exercised on frames a test can afford.
SMALL_TILES = EncodeSettings(tile_threshold=48, tile_size=16)
SIDES = st.sampled_from([1, 2, 3, 16, 17, 47, 48, 49, 64, 65, 100])


@st.composite
def pixel_formats(draw: st.DrawFn) -> tuple[Spec, np.ndarray]:
    samples = draw(st.sampled_from([1, 3]))
    bits_allocated = draw(st.sampled_from([8, 16]))
    bits_stored = draw(st.integers(1 if samples == 1 else 8, bits_allocated))
    signed = samples == 1 and draw(st.booleans())
    spec = Spec(
        modality="OT", rows=draw(SIDES), columns=draw(SIDES), frames=draw(st.integers(1, 3)),
        bits_allocated=bits_allocated, bits_stored=bits_stored, signed=signed, samples=samples,
        photometric="RGB" if samples == 3 else draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2"])),
        transfer_syntax=ExplicitVRLittleEndian,
    )
    low, high = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    shape = (spec.frames, spec.rows, spec.columns) + ((3,) if samples == 3 else ())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(low, high, size=shape, endpoint=True)
    values.reshape(-1)[:2] = (low, high)[: values.size]  # the extremes, always
    return spec, values.astype(f"{'i' if signed else 'u'}{bits_allocated // 8}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pixel_formats())
def test_any_pixel_format_round_trips(case: tuple[Spec, np.ndarray]) -> None:
    spec, frames = case
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "src.dcm"), Path(tmp, "dst.dcm")
        ds = dataset(spec, study="1.2.3", series="1.2.3.4", number=1)
        ds.PixelData = frames.tobytes()
        ds.save_as(src, enforce_file_format=True)

        result = transcode_file(src, dst, settings=SMALL_TILES, crosscheck="all")

        assert result.outcome is Outcome.TRANSCODED, f"{result.reason}: {result.detail}"
        assert result.frames == spec.frames
        assert_pixels_equal(src, dst)
        tiled = max(spec.rows, spec.columns) > SMALL_TILES.tile_threshold
        for index in output_indexes(dst):
            assert_profile_202(index)
            assert (index.tiles > 1) == (tiled and max(spec.rows, spec.columns) > SMALL_TILES.tile_size)
