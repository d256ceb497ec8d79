"""Generated instances in every source syntax the pipeline reads."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from fixtures.generate import Spec, demo_study, write
from tests.helpers import (
    assert_only_allowed_changes,
    assert_pixels_equal,
    assert_profile_202,
    output_indexes,
    sha256,
)
from transcode import Outcome, transcode_file
from transcode.codecs.htj2k import EncodeSettings

LOSSLESS = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
            RLELossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, HTJ2KLossless]


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("tsyntax", LOSSLESS, ids=lambda ts: ts.name)
def test_each_lossless_syntax_transcodes_bit_exactly(tsyntax: str, signed: bool, tmp_path: Path) -> None:
    src = write(Spec("CT", 130, 150, 3, 16, 12, signed=signed, transfer_syntax=tsyntax), tmp_path / "src.dcm")
    result = transcode_file(src, tmp_path / "out.dcm")
    assert result.outcome is Outcome.TRANSCODED, result.detail
    assert result.frames == 3
    assert_pixels_equal(src, tmp_path / "out.dcm")
    assert_only_allowed_changes(src, tmp_path / "out.dcm")


def test_lossy_jpeg_is_kept_as_an_exact_copy(tmp_path: Path) -> None:
    src = write(Spec("US", 64, 80, 1, 8, 8, samples=3, photometric="YBR_FULL_422",
                     transfer_syntax=JPEGBaseline8Bit), tmp_path / "src.dcm")
    result = transcode_file(src, tmp_path / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.KEPT, "lossy_source")
    assert sha256(tmp_path / "out.dcm") == sha256(src)
    assert not transcode_file(src, tmp_path / "none.dcm", copy_kept=False).destination
    assert not (tmp_path / "none.dcm").exists()


def test_rgb_planar_becomes_ybr_rct_interleaved(tmp_path: Path) -> None:
    src = write(Spec("US", 60, 70, 2, 8, 8, samples=3, photometric="RGB"), tmp_path / "src.dcm")
    result = transcode_file(src, tmp_path / "out.dcm")
    assert result.outcome is Outcome.TRANSCODED
    assert all(ix.colour_transform for ix in output_indexes(tmp_path / "out.dcm"))
    assert_pixels_equal(src, tmp_path / "out.dcm")
    assert_only_allowed_changes(src, tmp_path / "out.dcm")


def test_large_multiframe_is_tiled_resolution_major_with_extended_offsets(tmp_path: Path) -> None:
    src = write(Spec("MG", 600, 700, 3, 16, 10), tmp_path / "src.dcm")
    out = tmp_path / "out.dcm"
    result = transcode_file(src, out, settings=EncodeSettings(tile_threshold=512, tile_size=256))
    assert result.outcome is Outcome.TRANSCODED
    indexes = output_indexes(out)
    assert len(indexes) == 3 and all(ix.tiles == 9 for ix in indexes)
    for ix in indexes:
        assert_profile_202(ix)
    ds = pydicom.dcmread(out)
    offsets = ds.ExtendedOffsetTable
    lengths = ds.ExtendedOffsetTableLengths
    assert len(offsets) == len(lengths) == 3 * 8
    assert_pixels_equal(src, out)


def test_demo_study_transcodes_with_one_lossy_instance_kept(tmp_path: Path) -> None:
    paths = demo_study(tmp_path / "study")
    results = [transcode_file(p, tmp_path / f"{i}.dcm") for i, p in enumerate(paths)]
    outcomes = [(r.outcome, r.reason) for r in results]
    assert outcomes.count((Outcome.KEPT, "lossy_source")) == 1
    assert outcomes.count((Outcome.TRANSCODED, None)) == len(paths) - 1
