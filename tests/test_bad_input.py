"""Broken input: a clear reason, nothing written as a success, source untouched."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from fixtures.generate import Spec, write
from tests.conftest import PYDICOM_FILES
from tests.helpers import assert_pixels_equal, sha256
from transcode import Outcome, transcode_file
from transcode.dicom.read import open_instance

DCMDUMP = shutil.which("dcmdump")


def _first_fragment(data: bytes) -> int:
    """Offset of the first frame's item value (after the Basic Offset Table)."""
    bot = data.index(b"\xfe\xff\x00\xe0")
    return data.index(b"\xfe\xff\x00\xe0", bot + 8) + 8


def _corrupt_codestream_header(data: bytes) -> bytes:
    """Destroy the SIZ marker of the first codestream. (Damage inside the
    entropy-coded data is not detectable: J2K has no checksum and OpenJPEG
    decodes it to other pixels without complaint.)"""
    at = _first_fragment(data)
    assert data[at : at + 4] == b"\xff\x4f\xff\x51"
    return data[: at + 2] + b"\xff\x00\x00\x05" + data[at + 6 :]


def _truncate_first_fragment(data: bytes) -> bytes:
    """Shorten the first frame's codestream but keep the item lengths honest."""
    first = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xfe\xff\x00\xe0") + 8)
    length = struct.unpack_from("<I", data, first + 4)[0]
    cut = length // 2
    return data[: first + 4] + struct.pack("<I", cut) + data[first + 8 : first + 8 + cut] + data[first + 8 + length :]


def _wrong_fragment_length(data: bytes) -> bytes:
    first = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xfe\xff\x00\xe0") + 8)
    length = struct.unpack_from("<I", data, first + 4)[0]
    return data[: first + 4] + struct.pack("<I", length + 1000) + data[first + 8 :]


def _drop_file_meta(data: bytes) -> bytes:
    meta_end = 132 + 12 + struct.unpack_from("<I", data, 132 + 8)[0]
    return data[meta_end:]


FAILED, KEPT = Outcome.FAILED, Outcome.KEPT
#: Damaged files: what cannot be an archived instance fails (a file that ends
#: before its data set does: truncated); a whole file with damaged pixels is
#: kept as received, with the reason.
CASES: dict[str, tuple[str, Callable[[bytes], bytes], Outcome, set[str]]] = {
    "truncated-native": (ExplicitVRLittleEndian, lambda d: d[: len(d) - 5000], FAILED, {"truncated"}),
    "truncated-header": (ExplicitVRLittleEndian, lambda d: d[:300], FAILED, {"truncated"}),
    "truncated-encapsulated": (JPEG2000Lossless, lambda d: d[: len(d) - 3000], FAILED, {"truncated"}),
    "corrupt-codestream": (JPEG2000Lossless, _corrupt_codestream_header, KEPT, {"decode_error"}),
    "truncated-codestream": (JPEG2000Lossless, _truncate_first_fragment, KEPT, {"decode_error"}),
    "wrong-fragment-length": (JPEG2000Lossless, _wrong_fragment_length, FAILED, {"truncated"}),
    "truncated-deflated": (DeflatedExplicitVRLittleEndian, lambda d: d[: len(d) - 100], FAILED, {"truncated"}),
    "truncated-rle": (RLELossless, _truncate_first_fragment, KEPT, {"decode_error"}),
    "not-dicom": (ExplicitVRLittleEndian, lambda d: b"%PDF-1.7\n" + os.urandom(2000), FAILED, {"not_dicom"}),
    "empty": (ExplicitVRLittleEndian, lambda d: b"", FAILED, {"not_dicom"}),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_gets_a_reason_and_no_output(case: str, tmp_path: Path) -> None:
    tsyntax, mutate, outcome, reasons = CASES[case]
    # One frame: with several, the Extended Offset Table locates the frames
    # and a wrong item length is (rightly) harmless.
    good = write(Spec("CT", 128, 128, 1, 16, 12, transfer_syntax=tsyntax), tmp_path / "good.dcm")
    src = tmp_path / "bad.dcm"
    src.write_bytes(mutate(good.read_bytes()))
    before = sha256(src)
    dst = tmp_path / "out" / "bad.dcm"
    dst.parent.mkdir()

    result = transcode_file(src, dst)

    assert result.outcome is outcome, (result.outcome, result.reason, result.detail)
    assert result.reason in reasons, result.detail
    assert result.detail
    assert sha256(src) == before
    if outcome is FAILED:
        assert list(dst.parent.iterdir()) == []  # no output, no temporary left behind
    else:
        assert [p.name for p in dst.parent.iterdir()] == ["bad.dcm"] and sha256(dst) == before


@pytest.mark.parametrize("tsyntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_a_data_set_without_file_meta_gets_one_built(tsyntax: str, tmp_path: Path) -> None:
    """A bare data set (no preamble, no File Meta) is read in the syntax that
    walks it whole; the stored object is a Part 10 file with File Meta built
    for that syntax, and the result says so."""
    good = write(Spec("CT", 64, 64, 1, 16, 12, transfer_syntax=tsyntax), tmp_path / "good.dcm")
    src = tmp_path / "bare.dcm"
    src.write_bytes(_drop_file_meta(good.read_bytes()))
    result = transcode_file(src, tmp_path / "out.dcm")
    assert result.outcome is Outcome.TRANSCODED, result.detail
    assert result.file_meta_constructed and "File Meta was built" in result.detail
    assert_pixels_equal(good, tmp_path / "out.dcm")
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID

    # Kept as is (here: the header alone), the copy is a preamble, the built
    # File Meta, then the source's bytes.
    header = src.read_bytes()
    header = header[: header.index(b"\xe0\x7f\x10\x00" if tsyntax != ExplicitVRBigEndian else b"\x7f\xe0\x00\x10")]
    src.write_bytes(header)
    result = transcode_file(src, tmp_path / "kept.dcm")
    assert (result.outcome, result.reason) == (Outcome.KEPT, "no_pixel_data"), result.detail
    assert result.file_meta_constructed
    copy = (tmp_path / "kept.dcm").read_bytes()
    assert copy[128:132] == b"DICM" and copy.endswith(header)
    assert pydicom.dcmread(tmp_path / "kept.dcm").file_meta.TransferSyntaxUID == tsyntax
    if DCMDUMP:  # a stricter reader reads the copy whole
        assert subprocess.run([DCMDUMP, str(tmp_path / "kept.dcm")], capture_output=True).returncode == 0


def test_a_bare_data_set_with_encapsulated_pixels_is_not_given_a_guessed_syntax(tmp_path: Path) -> None:
    """Without File Meta, compressed pixels do not say which codec made them:
    no File Meta is made up for them."""
    good = write(Spec("CT", 64, 64, 1, 16, 12, transfer_syntax=RLELossless), tmp_path / "good.dcm")
    src = tmp_path / "bare.dcm"
    src.write_bytes(_drop_file_meta(good.read_bytes()))
    result = transcode_file(src, tmp_path / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "missing_file_meta"), result.detail


def _sequence(depth: int, item: bytes) -> bytes:
    """(0008,1115) nested `depth` deep, undefined lengths, around one item's elements (Explicit VR LE)."""
    for _ in range(depth):
        item = (b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + item
                + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    return item


def _before(data: bytes, tag: bytes, inserted: bytes) -> bytes:
    at = data.index(tag)
    return data[:at] + inserted + data[at:]


def _ct() -> bytes:
    return (PYDICOM_FILES / "CT_small.dcm").read_bytes()


def _rt_image_with_curve(path: Path) -> None:
    """An implicit VR RT Image with retired Curve Data, whose VR (OB or OW) only context tells."""
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_implicit.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.1"
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50003000, "OW", b"\x01\x02" * 20)
    ds.save_as(path, enforce_file_format=True)


def _big_endian_with_un_sequence() -> bytes:
    """A private UN element of undefined length (an Implicit VR LE sequence, PS3.5 6.2.2) in a big endian set."""
    item = b"\x08\x00\x50\x11\x06\x00\x00\x001.2.3\x00"
    private = (b"\x00\x09\x00\x10LO\x00\x08ACME 1.0" + b"\x00\x09\x10\x01UN\x00\x00\xff\xff\xff\xff"
               + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + item + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
               + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    return _before((PYDICOM_FILES / "MR_small_bigendian.dcm").read_bytes(), b"\x00\x10\x00\x10PN", private)


def _with_pixel_data_after_the_frames(path: Path) -> None:
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    ds.PixelData += b"\x01\x02" * 50
    ds.save_as(path)


def _with_implicit_file_meta(path: Path) -> None:
    """CT_small.dcm with its File Meta written in Implicit VR, as some old writers left it."""
    data = _ct()
    length_at = data.index(b"\x02\x00\x00\x00UL\x04\x00")
    data_set = data[length_at + 12 + struct.unpack_from("<I", data, length_at + 8)[0] :]
    meta = b""
    for element in pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm").file_meta:
        if element.tag.element:
            value = element.value if isinstance(element.value, bytes) else str(element.value).encode()
            value += b"\0" * (len(value) % 2)
            meta += struct.pack("<HHI", element.tag.group, element.tag.element, len(value)) + value
    path.write_bytes(data[:132] + struct.pack("<HHII", 2, 0, 4, len(meta)) + meta + data_set)


#: Whole files that dcmtk reads and that carry a SOP Instance UID, which
#: failed before (internal_error, unreadable, decode_error): each is archived.
READABLE: dict[str, tuple[Callable[[Path], None], set[tuple[Outcome, str | None]]]] = {
    "deep-sequences": (lambda p: p.write_bytes(_before(_ct(), b"\x09\x00\x10\x00LO", _sequence(400, b""))),
                       {(KEPT, "reader_error")}),
    "item-element-without-vr": (
        lambda p: p.write_bytes(_before(_ct(), b"\x09\x00\x10\x00LO",
                                        _sequence(1, b"\x08\x00\x50\x11\x00\x00\x06\x001.2.3\x00"))),
        {(KEPT, "reader_error")}),
    "big-endian-un-sequence": (lambda p: p.write_bytes(_big_endian_with_un_sequence()), {(KEPT, "reader_error")}),
    "empty-pixel-data": (
        lambda p: p.write_bytes(_ct()[: _ct().index(b"\xe0\x7f\x10\x00OW")] + b"\xe0\x7f\x10\x00OW" + bytes(6)),
        {(KEPT, "no_pixel_data")}),
    # dcmtk and pydicom read a File Meta group without VRs; it was `unreadable`.
    "implicit-vr-file-meta": (_with_implicit_file_meta, {(Outcome.TRANSCODED, None)}),
    # Bytes after the frames that are not padding: re-encoding would drop them.
    "pixel-data-longer-than-its-frames": (_with_pixel_data_after_the_frames, {(KEPT, "bad_pixel_data")}),
    # The data set writer may learn the VR one day: transcoded is as good.
    "rt-image-curve-data": (_rt_image_with_curve, {(KEPT, "transcode_error"), (Outcome.TRANSCODED, None)}),
}


@pytest.mark.parametrize("case", READABLE, ids=list(READABLE))
def test_every_readable_instance_is_archived(case: str, tmp_path: Path) -> None:
    make, outcomes = READABLE[case]
    src = tmp_path / "src.dcm"
    make(src)
    if DCMDUMP:  # the oracle: a stricter reader reads it whole
        assert subprocess.run([DCMDUMP, str(src)], capture_output=True).returncode == 0
    result = transcode_file(src, tmp_path / "out.dcm", metadata=True)
    assert (result.outcome, result.reason) in outcomes, result.detail
    if result.reason == "reader_error":  # indexed by what could be read of it: its identity
        base = "MR_small_bigendian.dcm" if case.startswith("big-endian") else "CT_small.dcm"
        assert result.metadata.first("00080018") == pydicom.dcmread(PYDICOM_FILES / base).SOPInstanceUID
    if result.outcome is KEPT:
        assert sha256(tmp_path / "out.dcm") == sha256(src)  # as received


def _with_offset_table(offsets: Callable[[list[int], int], list[int]]) -> bytes:
    """pydicom's two-frame RLE file (one fragment per frame) with its Basic
    Offset Table replaced by `offsets(true offsets, end of the last fragment)`."""
    data = (PYDICOM_FILES / "SC_rgb_rle_2frame.dcm").read_bytes()
    table = data.index(b"\xfe\xff\x00\xe0")
    old = list(struct.unpack_from("<2I", data, table + 8))
    assert struct.unpack_from("<I", data, table + 4)[0] == 8 and old[0] == 0
    second = table + 16 + old[1]
    end = second + 8 + struct.unpack_from("<I", data, second + 4)[0] - (table + 16)
    new = offsets(old, end)
    return data[:table + 4] + struct.pack(f"<I{len(new)}I", 4 * len(new), *new) + data[table + 16:]


#: Basic Offset Tables as old writers left them; dcmtk decodes every frame of
#: these (one fragment each), where following the table joined or lost frames.
BROKEN_TABLES: dict[str, Callable[[], bytes]] = {
    "offsets-off-by-one": lambda: _with_offset_table(lambda old, end: [0, old[1] + 1]),
    "an-entry-for-the-end": lambda: _with_offset_table(lambda old, end: [0, old[1], end]),
    "offsets-past-the-end": lambda: _with_offset_table(lambda old, end: [0, end + 64]),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", BROKEN_TABLES, ids=list(BROKEN_TABLES))
def test_frames_are_found_past_a_wrong_basic_offset_table(case: str, tmp_path: Path) -> None:
    src = tmp_path / "src.dcm"
    src.write_bytes(BROKEN_TABLES[case]())
    result = transcode_file(src, tmp_path / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.TRANSCODED, None), result.detail
    assert_pixels_equal(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm", tmp_path / "out.dcm")
    # the frames as stored, as the server sends those of a kept instance
    with open_instance(src) as damaged, open_instance(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm") as original:
        assert list(damaged.codestreams()) == list(original.codestreams())


def _relabelled(name: str, syntax: str) -> bytes:
    """pydicom's file `name` with File Meta naming `syntax` instead of its
    own, the meta's group length set to match."""
    data = (PYDICOM_FILES / name).read_bytes()
    at = data.index(b"\x02\x00\x10\x00UI")
    length = struct.unpack_from("<H", data, at + 6)[0]
    value = syntax.encode() + b"\0" * (len(syntax) % 2)
    data = data[: at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length :]
    group = data.index(b"\x02\x00\x00\x00UL\x04\x00") + 8
    return data[:group] + struct.pack("<I", struct.unpack_from("<I", data, group)[0] + len(value) - length) + data[group + 4:]


#: Data sets whose File Meta names the other little endian VR encoding, as
#: some writers leave them; pydicom reads them (with a warning), dcmtk not.
MISLABELLED = {
    "explicit-data-set-labelled-implicit": ("CT_small.dcm", ImplicitVRLittleEndian),
    "implicit-data-set-labelled-explicit": ("MR_small_implicit.dcm", ExplicitVRLittleEndian),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", MISLABELLED, ids=list(MISLABELLED))
def test_a_mislabelled_data_set_is_read_as_what_it_is(case: str, tmp_path: Path) -> None:
    name, syntax = MISLABELLED[case]
    src = tmp_path / "src.dcm"
    src.write_bytes(_relabelled(name, syntax))
    before = sha256(src)
    result = transcode_file(src, tmp_path / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.TRANSCODED, None), result.detail
    assert "File Meta names" in result.detail and sha256(src) == before
    assert_pixels_equal(PYDICOM_FILES / name, tmp_path / "out.dcm")
    original, out = pydicom.dcmread(PYDICOM_FILES / name), pydicom.dcmread(tmp_path / "out.dcm")
    del original.PixelData, out.PixelData
    assert out == original  # every other element, as the correctly labelled file holds it


def test_verification_mismatch_is_kept_and_never_written_as_transcoded(tmp_path: Path, monkeypatch) -> None:
    """If the encoder ever produced other pixels, the instance is kept as is."""
    from transcode.codecs import htj2k

    real_encode = htj2k.encode

    def lossy_encode(frame, **kwargs):  # flips one pixel before encoding
        damaged = frame.copy()
        damaged.reshape(-1)[0] ^= 1
        return real_encode(damaged, **kwargs)

    monkeypatch.setattr(htj2k, "encode", lossy_encode)
    src = write(Spec("CT", 64, 64, 2, 16, 12), tmp_path / "src.dcm")
    result = transcode_file(src, tmp_path / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.KEPT, "verify_mismatch")
    assert sha256(tmp_path / "out.dcm") == sha256(src)  # the copy, not a damaged transcode
    assert result.frame_index == [] and result.pixel_digest is None


def test_destination_equal_to_source_is_refused(tmp_path: Path) -> None:
    src = write(Spec(), tmp_path / "src.dcm")
    before = sha256(src)
    result = transcode_file(src, src)
    assert (result.outcome, result.reason) == (Outcome.FAILED, "write_error")
    assert sha256(src) == before


def test_missing_destination_folder_fails_cleanly(tmp_path: Path) -> None:
    src = write(Spec(), tmp_path / "src.dcm")
    result = transcode_file(src, tmp_path / "nowhere" / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "write_error")


def test_a_mismatch_seen_only_under_threads_is_proved_again_on_one_thread(tmp_path: Path, monkeypatch, caplog) -> None:
    """A codec that misbehaves only beside other threads (seen, rarely, here):
    the instance is proved again serially instead of being kept."""
    import threading

    from transcode.codecs import htj2k

    real_encode = htj2k.encode

    def flaky_encode(frame, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            frame = frame.copy()
            frame.reshape(-1)[0] ^= 1
        return real_encode(frame, **kwargs)

    monkeypatch.setattr(htj2k, "encode", flaky_encode)
    src = write(Spec("CT", 64, 64, 3, 16, 12), tmp_path / "src.dcm")
    result = transcode_file(src, tmp_path / "out.dcm", workers=2)
    assert result.outcome is Outcome.TRANSCODED
    assert "retrying on one thread" in caplog.text
    assert_pixels_equal(src, tmp_path / "out.dcm")


def test_32_bit_frames_are_kept_before_encoding_unless_crosschecks_are_off(tmp_path: Path, monkeypatch,
                                                                          caplog) -> None:
    """32-bit frames come out as 32-bit HTJ2K, which OpenJPEG never opens:
    every RT Dose was encoded twice (the second time on one thread, logged as
    a codec that misbehaved under threads) to be kept anyway."""
    from transcode.codecs import htj2k

    encodes = []
    real_encode = htj2k.encode
    def counted(frame, **kw):
        encodes.append(frame.shape)
        return real_encode(frame, **kw)

    monkeypatch.setattr(htj2k, "encode", counted)
    src = PYDICOM_FILES / "rtdose.dcm"  # 15 frames of 10x10, Bits Allocated 32
    result = transcode_file(src, tmp_path / "kept.dcm", workers=2)
    assert (result.outcome, result.reason) == (Outcome.KEPT, "independent_decoder_mismatch")
    assert "31-bit" in result.detail and "--crosscheck none" in result.detail
    assert (10, 10) not in encodes and "retrying" not in caplog.text
    assert sha256(tmp_path / "kept.dcm") == sha256(src)

    result = transcode_file(src, tmp_path / "out.dcm", workers=2, crosscheck="none")
    assert result.outcome is Outcome.TRANSCODED and encodes.count((10, 10)) == 15
    frames = generate_frames(pydicom.dcmread(tmp_path / "out.dcm").PixelData, number_of_frames=15)
    decoded = [htj2k.decode(frame) for frame in frames]  # with OpenJPH: pydicom's OpenJPEG cannot
    assert np.array_equal(np.stack(decoded), pydicom.dcmread(src).pixel_array)


def test_a_lossless_only_syntax_without_a_decoder_is_kept_as_unsupported_not_lossy(tmp_path: Path) -> None:
    """JPEG 2000 Part 2 Multi-component Lossless Only (.92) is lossless by
    definition; nothing here decodes it. It was kept as `lossy_source`, a
    reason that tells an archive's owner the pixels were degraded."""
    ds = pydicom.dcmread(write(Spec("CT", 16, 16, 1, 16, 12, transfer_syntax=JPEG2000Lossless), tmp_path / "j2k.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"
    ds.save_as(tmp_path / "src.dcm")
    result = transcode_file(tmp_path / "src.dcm", tmp_path / "out.dcm")
    assert (result.outcome, result.reason) == (Outcome.KEPT, "unsupported_transfer_syntax"), result.detail
    assert sha256(tmp_path / "out.dcm") == sha256(tmp_path / "src.dcm")
