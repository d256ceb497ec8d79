"""Tomosynthesis-sized objects through the whole transcode (run with -m slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from fixtures.generate import Spec, frame_arrays, write_dbt
from tests.helpers import assert_profile_202, output_indexes
from transcode import Outcome, transcode_file
from transcode.codecs import htj2k


@pytest.mark.slow
def test_dbt_object_transcodes_tiled_and_bit_exact(tmp_path: Path) -> None:
    src = write_dbt(tmp_path / "dbt.dcm")  # 69 x 2457 x 1890, 10 bits: 640 MB of pixels
    out = tmp_path / "out.dcm"
    result = transcode_file(src, out)
    assert result.outcome is Outcome.TRANSCODED, result.detail
    assert result.frames == 69 and result.bytes_out < result.bytes_in / 2
    indexes = output_indexes(out)
    for index in indexes:
        assert_profile_202(index)
        assert index.tiles == 6  # 1024-pixel tiles
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    lengths = np.frombuffer(ds.ExtendedOffsetTableLengths, "<u8")
    assert lengths.size == 69
    # Spot-check frames against the generator, through the stored byte ranges.
    expected = frame_arrays(Spec("MG", 2457, 1890, 69, 16, 10))
    with open(out, "rb") as f:
        for number, frame in enumerate(expected):
            if number % 17:
                continue
            offset, length = result.frame_spans[number]
            f.seek(offset)
            np.testing.assert_array_equal(htj2k.decode(f.read(length)), frame)
