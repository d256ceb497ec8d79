"""Truncation is detected, not guessed: a file that ends before its data set
does fails as `truncated`, checked against dcmtk's `dcmdump` as the oracle."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.conftest import PYDICOM_FILES
from transcode import Outcome, transcode_file
from transcode.dicom.structure import Truncated, Unfollowable, meta_end, walk

DCMDUMP = shutil.which("dcmdump")
MR = PYDICOM_FILES / "MR_small_implicit.dcm"
#: Files to cut: implicit and explicit little endian, big endian, sequences
#: of undefined length, encapsulated frames (RLE, JPEG-LS, J2K), a bare data set.
FUZZED = ["MR_small_implicit.dcm", "CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
          "MR_small_jpeg_ls_lossless.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "rtplan.dcm",
          "nested_priv_SQ.dcm", "rtstruct.dcm"]
CUTS_PER_FILE = 24


def boundaries(data: bytes) -> list[int]:
    """Where each top-level element of a Part 10 file ends."""
    start, syntax = meta_end(data, 132)
    return sorted(position + (length or 0) for position, length in walk(data, start, syntax).elements.values())


def cut(tmp_path: Path, source: Path, size: int) -> Path:
    path = tmp_path / f"{source.stem}-{size}.dcm"
    path.write_bytes(source.read_bytes()[:size])
    return path


def test_an_mr_cut_inside_its_image_pixel_module_is_truncated(tmp_path: Path) -> None:
    """The issue's example: an MR cut at an element boundary in group 0028,
    with Samples per Pixel and Photometric Interpretation but no Rows (1373
    bytes in the issue's copy of the file, 1376 in this one). It was
    archived as kept/no_pixel_data; 1373 here ends inside an element."""
    data = MR.read_bytes()
    after_photometric = data.index(b"\x28\x00\x04\x00") + 8 + 12
    assert after_photometric in boundaries(data) and data[after_photometric : after_photometric + 4] == b"\x28\x00\x10\x00"
    for size in (after_photometric, 1373):
        result = transcode_file(cut(tmp_path, MR, size), tmp_path / "out.dcm")
        assert (result.outcome, result.reason) == (Outcome.FAILED, "truncated")
        assert not (tmp_path / "out.dcm").exists()
    assert "without Rows, Columns" in transcode_file(cut(tmp_path, MR, after_photometric), tmp_path / "out.dcm").detail


def test_an_image_header_that_stops_before_its_pixel_module_is_truncated(tmp_path: Path) -> None:
    data = MR.read_bytes()
    before_0028 = min(b for b in boundaries(data) if data[b : b + 2] == b"\x28\x00")
    result = transcode_file(cut(tmp_path, MR, before_0028), tmp_path / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "truncated")
    assert "MR Image Storage" in result.detail


def test_a_whole_image_header_without_pixels_is_kept_and_says_so(tmp_path: Path) -> None:
    """Cut exactly before Pixel Data, nothing tells the file from a header
    sent on its own: kept as received, with a detail that says what is
    missing (a complete copy ingested later replaces it, test_resend.py)."""
    data = MR.read_bytes()
    pixel_data = data.index(b"\xe0\x7f\x10\x00")
    result = transcode_file(cut(tmp_path, MR, pixel_data), tmp_path / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.KEPT, "no_pixel_data")
    assert "describes an image (64 x 64)" in result.detail
    assert result.frames == 0


@pytest.mark.parametrize(("syntax", "head"), [(ImplicitVRLittleEndian, b"\x08\x00\x05\x00\x0a\x00\x00\x00"),
                                              (ExplicitVRLittleEndian, b"\x08\x00\x05\x00CS\x0a\x00"),
                                              (ExplicitVRBigEndian, b"\x00\x08\x00\x05CS\x00\x0a")])
def test_the_walk_reads_each_encoding_and_finds_the_cut(syntax: str, head: bytes) -> None:
    element = head + b"ISO_IR 100"
    assert list(walk(element, 0, syntax).elements) == [0x00080005]
    with pytest.raises(Truncated, match="10 bytes; the file ends 1 bytes short"):
        walk(element[:-1], 0, syntax)
    with pytest.raises(Truncated, match="inside an element header"):
        walk(element[:5], 0, syntax)


def test_the_walk_follows_undefined_lengths_and_gives_up_on_nonsense() -> None:
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x08\x00\x05\x00CS\x02\x00AB" + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    sequence = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert list(walk(sequence, 0, ExplicitVRLittleEndian).elements) == [0x00081115]
    for end in range(12, len(sequence), 4):  # every cut inside the sequence
        with pytest.raises(Truncated):
            walk(sequence[:end], 0, ExplicitVRLittleEndian)
    # A VR that is not one is read with a 2-byte length, as dcmtk does.
    assert list(walk(b"\x08\x00\x05\x00\x00\x00\x02\x00AB", 0, ExplicitVRLittleEndian).elements) == [0x00080005]
    with pytest.raises(Unfollowable, match="where it does not belong"):
        walk(b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", 0, ExplicitVRLittleEndian)
    with pytest.raises(Unfollowable, match="undefined length with VR UT"):
        walk(b"\x08\x00\x05\x00UT\x00\x00\xff\xff\xff\xff", 0, ExplicitVRLittleEndian)


@pytest.mark.skipif(DCMDUMP is None, reason="dcmdump (Debian package dcmtk) is not installed")
@pytest.mark.parametrize("name", FUZZED)
def test_no_cut_file_is_archived_unless_dcmdump_reads_it_whole(name: str, tmp_path: Path) -> None:
    """Cut each file at evenly spaced offsets and at top-level element
    boundaries (bounded: CUTS_PER_FILE cuts). A cut file may end transcoded
    or kept only where dcmdump reads it without error; every other one fails
    with a reason a damaged file earns, never an internal error."""
    source = PYDICOM_FILES / name
    data = source.read_bytes()
    sizes = {len(data) * k // (CUTS_PER_FILE // 2 + 1) for k in range(1, CUTS_PER_FILE // 2 + 1)}
    if data[128:132] == b"DICM":
        ends = [b for b in boundaries(data) if b < len(data)]
        sizes |= set(ends[:: max(1, len(ends) // (CUTS_PER_FILE // 2))])
    archived = []
    for size in sorted(sizes):
        path = cut(tmp_path, source, size)
        result = transcode_file(path, tmp_path / "out.dcm", workers=1)
        readable = subprocess.run([DCMDUMP, str(path)], capture_output=True).returncode == 0
        if result.outcome is not Outcome.FAILED:
            assert readable, f"{size} bytes: {result.outcome}/{result.reason} but dcmdump cannot read it whole"
            archived.append(size)
        else:
            assert result.reason in {"truncated", "missing_file_meta", "not_dicom", "unreadable",
                                     "no_sop_instance_uid"}, f"{size} bytes: {result.reason}: {result.detail}"
        (tmp_path / "out.dcm").unlink(missing_ok=True)
        path.unlink()
