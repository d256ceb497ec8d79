"""Every pydicom bundled file and every corpus file ends in its expected outcome;
every transcoded output is bit-exact, .202-conformant and otherwise unchanged."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import corpus_files, pydicom_files
from tests.helpers import (
    assert_only_allowed_changes,
    assert_pixels_equal,
    assert_profile_202,
    output_indexes,
    sha256,
)
from transcode import Outcome, transcode_file
from transcode.digest import file_digest

LOSSY = "lossy_source"
#: Files that are not transcoded, with the reason they must end with. All
#: others with pixel data must transcode; files without are kept (no_pixel_data).
EXPECTED = {
    # lossy sources: the bytes are kept, never recompressed
    **dict.fromkeys(
        ["693_J2KI.dcm", "JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "JPEG2000.dcm",
         "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "JPGExtended.dcm",
         "SC_jpeg_no_color_transform.dcm", "SC_jpeg_no_color_transform_2.dcm", "SC_rgb_dcmtk_+eb+cr.dcm",
         "SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_rgb_dcmtk_+eb+cy+n2.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm",
         "SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_dcmtk_+eb+cy+s4.dcm", "SC_rgb_gdcm_KY.dcm",
         "SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_sample.dcm", "SC_rgb_jpeg.dcm",
         "SC_rgb_jpeg_app14_dcmd.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm",
         "SC_rgb_small_odd_jpeg.dcm", "examples_ybr_color.dcm", "HTJ2K_08_RGB.dcm", "MR2_J2KI.dcm",
         "RG1_J2KI.dcm", "RG3_J2KI.dcm", "US1_J2KI.dcm"],
        LOSSY,
    ),
    # OpenJPEG cannot read 32-bit HTJ2K: other systems could not open the output
    **dict.fromkeys(
        ["SC_rgb_32bit.dcm", "SC_rgb_32bit_2frame.dcm", "SC_rgb_expb_32bit.dcm", "SC_rgb_expb_32bit_2frame.dcm",
         "SC_rgb_rle_32bit.dcm", "SC_rgb_rle_32bit_2frame.dcm", "rtdose.dcm", "rtdose_1frame.dcm",
         "rtdose_expb.dcm", "rtdose_expb_1frame.dcm", "rtdose_rle.dcm", "rtdose_rle_1frame.dcm"],
        "independent_decoder_mismatch",
    ),
    **dict.fromkeys(
        ["liver.dcm", "liver_1frame.dcm", "liver_expb.dcm", "liver_expb_1frame.dcm", "liver_j2k.dcm",
         "liver_nonbyte_aligned.dcm", "liver_nonbyte_aligned_j2k.dcm", "liver_nonbyte_aligned_rle.dcm",
         "liver_rle.dcm"],
        "one_bit_pixels",
    ),
    # Deflated Image Frame Compression (1.2.840.10008.1.2.8.1), 1-bit segmentations
    "liver_deflate.dcm": "unsupported_transfer_syntax",
    "liver_nonbyte_aligned_deflate.dcm": "unsupported_transfer_syntax",
    "parametric_map_float.dcm": "float_pixels",
    "parametric_map_double_float.dcm": "float_pixels",
    "SC_ybr_full_422_uncompressed.dcm": "chroma_subsampled",
    # values up to 4095 in a signed 12-bit image: the 13th bit is real data
    "mlut_18.dcm": "bits_above_high_bit",
    # kept: damaged pixel description (an IS value "1A" in the Image Pixel module)
    "badVR.dcm": "bad_pixel_data",
    # failed: not an instance that can be archived (truncated, unidentifiable, not DICOM)
    "MR_truncated.dcm": "truncated",
    "rtplan_truncated.dcm": "truncated",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "truncated",
    "nested_priv_SQ.dcm": "no_sop_instance_uid",
    "meta_missing_tsyntax.dcm": "missing_file_meta",
    "no_meta.dcm": "not_dicom",
    "LICENSE": "not_dicom",
    "empty_charset_LEI.dcm": "no_sop_instance_uid",
    "JLSL_RGB_ILV0.dcm": "no_sop_instance_uid",
    "JLSL_RGB_ILV1.dcm": "no_sop_instance_uid",
    "JLSL_RGB_ILV2.dcm": "no_sop_instance_uid",
    "JLSN_RGB_ILV0.dcm": "no_sop_instance_uid",
}
FAILED = {"unreadable", "truncated", "missing_file_meta", "not_dicom", "no_sop_instance_uid"}
NO_PIXELS = {"reportsi.dcm", "reportsi_with_empty_number_tags.dcm", "rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm",
             "UN_sequence.dcm", "no_meta_group_length.dcm", "priv_SQ.dcm", "ExplVR_BigEndNoMeta.dcm",
             "ExplVR_LitEndNoMeta.dcm", "rtstruct.dcm"}
#: Bare data sets (no File Meta): stored with File Meta built for the syntax they read whole in.
NO_FILE_META = {"ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "rtstruct.dcm", "OT-PAL-8-face.dcm"}


def _name(path: Path) -> str:
    return path.name


def check_file(src: Path, tmp_path: Path) -> None:
    before = sha256(src)
    dst = tmp_path / "out.dcm"
    result = transcode_file(src, dst)
    assert sha256(src) == before, "the source was modified"
    name = src.name
    expected = EXPECTED.get(name, "no_pixel_data" if name in NO_PIXELS else None)
    assert result.file_meta_constructed == (name in NO_FILE_META)
    if expected is None:
        assert result.outcome is Outcome.TRANSCODED, f"{result.reason}: {result.detail}"
        if name in NO_FILE_META:  # compared with the source as pydicom reads it in the syntax found
            ds = pydicom.dcmread(src, force=True)
            ds.file_meta.TransferSyntaxUID = result.transfer_syntax
            ds.save_as(src := tmp_path / "source-with-meta.dcm")
        assert result.frames >= 1 and result.pixel_digest
        assert result.output_digest == file_digest(dst)
        assert_pixels_equal(src, dst)
        assert_only_allowed_changes(src, dst)
        indexes = output_indexes(dst)
        assert [ix.to_dict() for ix in indexes] == [ix.to_dict() for ix in result.frame_index]
        for index in indexes:
            assert_profile_202(index)
        return
    assert result.reason == expected, result.detail
    assert result.detail
    if expected in FAILED:
        assert result.outcome is Outcome.FAILED and not dst.exists()
    elif name in NO_FILE_META:  # the source's bytes after a preamble and the File Meta built for them
        assert result.outcome is Outcome.KEPT and result.file_meta_constructed
        copy = dst.read_bytes()
        assert copy[128:132] == b"DICM" and copy.endswith(src.read_bytes())
        assert pydicom.dcmread(dst).file_meta.TransferSyntaxUID == result.transfer_syntax
    else:
        assert result.outcome is Outcome.KEPT and sha256(dst) == before  # an exact copy


@pytest.mark.parametrize("src", pydicom_files(), ids=_name)
def test_pydicom_bundled_file(src: Path, tmp_path: Path) -> None:
    check_file(src, tmp_path)


@pytest.mark.parametrize("src", corpus_files(), ids=_name)
def test_corpus_file(src: Path, tmp_path: Path) -> None:
    check_file(src, tmp_path)
