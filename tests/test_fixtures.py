"""Generated instances in every source syntax the pipeline reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
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

from fixtures.generate import Spec, demo_study, frame_arrays, write
from tests.helpers import (
    assert_only_allowed_changes,
    assert_pixels_equal,
    assert_profile_202,
    output_indexes,
    read,
    sha256,
)
from transcode import Outcome, transcode_file
from transcode.codecs.htj2k import EncodeSettings
from transcode.codecs.uncompressed_plugin import ENCAPSULATED_UNCOMPRESSED

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


@pytest.mark.parametrize("spec", [
    Spec("CT", 130, 150, 3, 16, 12, signed=True, transfer_syntax=ENCAPSULATED_UNCOMPRESSED),
    Spec("XA", 61, 37, 2, 8, 8, transfer_syntax=ENCAPSULATED_UNCOMPRESSED),  # odd frames: padded fragments
    Spec("US", 33, 45, 2, 8, 8, samples=3, photometric="RGB", transfer_syntax=ENCAPSULATED_UNCOMPRESSED),
], ids=["ct-16-bit-signed", "odd-length-8-bit", "rgb"])
def test_encapsulated_uncompressed_transcodes_bit_exactly(spec: Spec, tmp_path: Path) -> None:
    """PS3.5 A.4.11 (1.2.840.10008.1.2.1.98): native frames, one per
    fragment. pydicom 3.0 has no decoder for it, and the policy called it
    lossy (kept as `lossy_source`). The oracle is the generator's frames."""
    src = write(spec, tmp_path / "src.dcm")
    result = transcode_file(src, tmp_path / "out.dcm")
    assert result.outcome is Outcome.TRANSCODED, result.detail
    np.testing.assert_array_equal(read(tmp_path / "out.dcm").pixel_array, np.stack(list(frame_arrays(spec))))
    assert_only_allowed_changes(src, tmp_path / "out.dcm")


def _relaid(src: Path, dst: Path, fragments: list[bytes], **changes: object) -> Path:
    ds = pydicom.dcmread(src)
    ds.PixelData = encapsulate(fragments)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def test_encapsulated_uncompressed_planes_are_read_as_planes(tmp_path: Path) -> None:
    """Planar Configuration 1 applies inside each fragment as it does to native data."""
    spec = Spec("US", 33, 45, 2, 8, 8, samples=3, photometric="RGB", transfer_syntax=ENCAPSULATED_UNCOMPRESSED)
    frames = list(frame_arrays(spec))
    planes = [f.transpose(2, 0, 1).tobytes() + b"\0" for f in frames]  # 4455 bytes a frame: padded
    src = _relaid(write(spec, tmp_path / "pixels.dcm"), tmp_path / "src.dcm", planes, PlanarConfiguration=1)
    result = transcode_file(src, tmp_path / "out.dcm")
    assert result.outcome is Outcome.TRANSCODED, result.detail
    np.testing.assert_array_equal(read(tmp_path / "out.dcm").pixel_array, np.stack(frames))


def test_an_encapsulated_uncompressed_fragment_of_another_length_is_kept_with_its_reason(tmp_path: Path) -> None:
    spec = Spec("CT", 20, 30, 2, 16, 12, transfer_syntax=ENCAPSULATED_UNCOMPRESSED)
    frames = [f.tobytes() for f in frame_arrays(spec)]
    src = _relaid(write(spec, tmp_path / "pixels.dcm"), tmp_path / "src.dcm", [frames[0], frames[1][:-2]])
    result = transcode_file(src, tmp_path / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.KEPT, "decode_error")
    assert "a fragment of 1198 bytes holds a frame of 1200 bytes" in result.detail
    assert sha256(tmp_path / "out.dcm") == sha256(src)
