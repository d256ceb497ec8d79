"""Every element of a transcoded instance carries the source's value bytes,
as a second parser (dcmtk) reads them: nothing re-formatted, re-interpreted
through a dictionary or byte-swapped where the VR does not say how."""

from __future__ import annotations

import struct
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import UID

from tests.conftest import corpus_files, pydicom_files
from tests.dcmdump import Element, data_set_view, dump, require_dcmdump
from tests.helpers import sha256
from transcode import Outcome, transcode_file
from transcode.dicom.read import open_instance

#: The data set changes DESIGN.md allows: (keyword, source value, output value).
ALLOWED = {("PhotometricInterpretation", "[RGB]", "[YBR_RCT]"), ("PlanarConfiguration", "1", "0")}
#: dcmtk's names for a dictionary entry of several VRs, where it has not chosen one.
AMBIGUOUS = {"xs", "ox", "lt", "px", "up"}


def _bytes(element: Element) -> str:
    """The value bytes dcmdump prints for OB (bytes) or OW (little endian words)."""
    if element.vr == "OW":
        return "\\".join(f"{w[2:]}\\{w[:2]}" for w in element.value.split("\\"))
    return element.value


def _same_value(x: Element, y: Element) -> bool:
    """Equal but for a VR dcmtk left open (`xs`: US or SS) or one it chose
    otherwise for an Implicit VR source (OB or OW)."""
    if (x.path, x.length) != (y.path, y.length):
        return False
    if {x.vr, y.vr} & AMBIGUOUS:
        return x.value == y.value
    return {x.vr, y.vr} == {"OB", "OW"} and _bytes(x) == _bytes(y)


def _differences(source: list[Element], output: list[Element]) -> list[str]:
    a, b = data_set_view(source), data_set_view(output)
    problems = []
    for x, y in zip(a, b, strict=False):
        if x == y or _same_value(x, y):
            continue
        allowed = (x.path == y.path and len(x.path) == 1 and x.vr == y.vr
                   and any(x.value == old and y.value == new for _, old, new in ALLOWED))
        if not allowed:
            problems.append(f"{'/'.join(x.path)} {x.vr} {x.value[:60]} #{x.length}  ->  "
                            f"{'/'.join(y.path)} {y.vr} {y.value[:60]} #{y.length}")
    if len(a) != len(b):
        problems.append(f"{len(a)} elements in the source, {len(b)} in the output")
    return problems


def _group_lengths(elements: list[Element]) -> set[str]:
    """The top-level group lengths of a dump, but File Meta's and the Pixel Data group's (written anew)."""
    return {e.tag for e in elements if len(e.path) == 1 and e.tag.endswith(",0000") and e.tag[:4] not in ("0002", "7fe0")}


def assert_same_elements(src: Path, out: Path) -> None:
    """dcmdump of `src` and `out` agree element by element, values whole.
    An Implicit VR source is read through dcmtk's dictionaries; so is the
    output (`+uc`: the UN elements we wrote are read by the VR dcmtk knows
    for them, as it does in the source), so equal text means equal value
    bytes. Each VR we wrote is then the one dcmtk finds, or UN."""
    with open_instance(src) as instance:
        implicit = UID(instance.transfer_syntax).is_implicit_VR
    source = dump(src)
    output = dump(out, "+uc") if implicit else dump(out)
    assert _group_lengths(output) == _group_lengths(source)  # kept (their values recalculated: test_dicom_header)
    problems = _differences(source, output)
    assert not problems, "\n".join(problems[:20])
    if implicit:
        for known, written in zip(data_set_view(output), data_set_view(dump(out)), strict=True):
            assert written.vr in (known.vr, "UN") or {known.vr, written.vr} == {"OB", "OW"}, f"{written.path}: written as {written.vr}, dcmtk reads {known.vr}"


@pytest.mark.parametrize("src", pydicom_files() + corpus_files(), ids=lambda p: p.name)
def test_dcmdump_reads_the_same_elements(src: Path, tmp_path: Path) -> None:
    require_dcmdump()
    out = tmp_path / "out.dcm"
    result = transcode_file(src, out, crosscheck="none")
    if result.outcome is Outcome.KEPT and not result.file_meta_constructed:
        assert sha256(out) == sha256(src)
    elif result.outcome is Outcome.KEPT:  # the source's data set behind File Meta built for it
        assert dump(out) == dump(src)
    elif result.outcome is Outcome.TRANSCODED:
        assert_same_elements(src, out)


# Generated sources for what the public files lack: an Implicit VR data set
# with padded numbers, private and ambiguous elements and an over-long value,
# and a big endian one with private UN bytes that pydicom's private
# dictionary calls SL. Built byte by byte, so the test knows every byte.

_SOP = b"1.2.826.0.1.3680043.8.498.1\0"


def _element(tag: int, vr: str, value: bytes, *, implicit: bool, little: bool = True) -> bytes:
    order = "<" if little else ">"
    head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(f"{order}I", len(value)) + value
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return head + vr.encode() + struct.pack(f"{order}xxI", len(value)) + value
    return head + vr.encode() + struct.pack(f"{order}H", len(value)) + value


def _part10(syntax: bytes, data_set: bytes) -> bytes:
    meta = b"".join(_element(t, vr, v, implicit=False) for t, vr, v in (
        (0x00020001, "OB", b"\0\1"), (0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.7\0"),
        (0x00020003, "UI", _SOP), (0x00020010, "UI", syntax)))
    return bytes(128) + b"DICM" + _element(0x00020000, "UL", struct.pack("<I", len(meta)), implicit=False) + meta \
        + data_set


def _image_module(e, order: str) -> bytes:
    words = lambda *v: struct.pack(f"{order}{len(v)}H", *v)  # noqa: E731
    return b"".join((
        e(0x00280002, "US", words(1)), e(0x00280004, "CS", b"MONOCHROME2 "), e(0x00280010, "US", words(8)),
        e(0x00280011, "US", words(8)), e(0x00280100, "US", words(16)), e(0x00280101, "US", words(16)),
        e(0x00280102, "US", words(15)), e(0x00280103, "US", words(1)),
        e(0x00280106, "SS", struct.pack(f"{order}h", -5)),  # US or SS in the dictionary
    ))


def _pixels(order: str) -> bytes:
    return np.arange(-32, 32, dtype=f"{order}i2").reshape(8, 8).tobytes()


def implicit_source() -> bytes:
    e = partial(_element, implicit=True)
    return _part10(b"1.2.840.10008.1.2\0", b"".join((
        e(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\0"), e(0x00080018, "UI", _SOP),
        e(0x00080081, "ST", b"x" * 70_000),  # too long for ST's 2-byte length: UN
        e(0x00090010, "LO", b"GEMS_GENIE_1"), e(0x00091011, "UN", b"\0\0\1\2"),
        # a private sequence of undefined length that nobody here knows
        e(0x00110010, "LO", b"ACME_TEST "), struct.pack("<HHI", 0x0011, 0x1001, 0xFFFFFFFF) + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        + e(0x00100010, "PN", b"A^B ") + b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0",
        e(0x00180050, "DS", b"  120 "), e(0x00200013, "IS", b" 7"),
        _image_module(e, "<"),
        e(0x50003000, "OW", b"\1\2\3\4"),  # retired Curve Data: OB or OW in the dictionary
        e(0x7FE00010, "OW", _pixels("<")),
    )))


def big_endian_source() -> bytes:
    e = partial(_element, implicit=False, little=False)
    item = e(0x00280010, "US", struct.pack(">H", 5)) + e(0x00280030, "DS", b"0.5\\0.5 ")
    return _part10(b"1.2.840.10008.1.2.2\0", b"".join((
        e(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\0"), e(0x00080018, "UI", _SOP),
        e(0x00090010, "LO", b"GEMS_GENIE_1"), e(0x00091011, "UN", b"\0\0\1\2"),
        e(0x00089215, "SQ", struct.pack(">HHI", 0xFFFE, 0xE000, len(item)) + item),
        e(0x00181063, "DS", b"33.3"), e(0x00189089, "FD", struct.pack(">3d", 1.0, -0.5, 0.25)),
        _image_module(e, ">"),
        e(0x00280009, "AT", struct.pack(">HH", 0x0018, 0x1063)),
        e(0x7FE00010, "OW", _pixels(">")),
    )))


def _transcode(tmp_path: Path, data: bytes) -> tuple[Path, Path]:
    src, out = tmp_path / "src.dcm", tmp_path / "out.dcm"
    src.write_bytes(data)
    result = transcode_file(src, out, crosscheck="none")
    assert result.outcome is Outcome.TRANSCODED, result.detail
    return src, out


def test_implicit_vr_values_keep_their_bytes(tmp_path: Path) -> None:
    src, out = _transcode(tmp_path, implicit_source())
    data = out.read_bytes()
    assert b"\x18\x00\x50\x00DS\x06\x00  120 " in data  # the padding stays
    assert b"\x20\x00\x13\x00IS\x02\x00 7" in data
    assert b"\x09\x00\x11\x10UN\0\0\4\0\0\0\0\0\1\2" in data  # private: UN, bytes as they were
    assert b"\x08\x00\x81\x00UN\0\0\x70\x11\x01\x00" in data  # 70000 bytes do not fit ST
    assert b"\x00\x50\x00\x30OW\0\0\4\0\0\0\1\2\3\4" in data  # Curve Data: OW
    assert b"\x28\x00\x06\x01SS\x02\x00\xfb\xff" in data  # US or SS, Pixel Representation 1
    assert b"\x11\x00\x01\x10UN\0\0\xff\xff\xff\xff\xfe\xff\x00\xe0" in data  # the private sequence as it was
    assert_same_elements(src, out)


def test_big_endian_swaps_only_what_the_vr_orders(tmp_path: Path) -> None:
    src, out = _transcode(tmp_path, big_endian_source())
    data = out.read_bytes()
    assert b"\x09\x00\x11\x10UN\0\0\4\0\0\0\0\0\1\2" in data  # UN: never swapped (PS3.5 6.2.2)
    assert b"\x28\x00\x10\x00US\x02\x00\x05\x00" in data  # inside a sequence item: swapped
    assert b"\x28\x00\x09\x00AT\x04\x00\x18\x00\x63\x10" in data
    assert struct.pack("<3d", 1.0, -0.5, 0.25) in data
    assert_same_elements(src, out)


def test_a_data_set_that_cannot_be_copied_exactly_is_kept_as_is(tmp_path: Path) -> None:
    """An element whose VR is no VR: no copy could be exact, so none is made."""
    data = big_endian_source().replace(b"\x00\x18\x10\x63DS", b"\x00\x18\x10\x63Z!")
    src, out = tmp_path / "src.dcm", tmp_path / "out.dcm"
    src.write_bytes(data)
    result = transcode_file(src, out, crosscheck="none")
    assert (result.outcome, result.reason) == (Outcome.KEPT, "malformed_data_set"), result.detail
    assert "(0018,1063)" in result.detail
    assert out.read_bytes() == data


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_command_group_elements_in_a_data_set_are_kept(implicit: bool, tmp_path: Path) -> None:
    """Some PACS stored DIMSE command elements (0000,xxxx) in files (GDCM's
    test data has one). pydicom lists them after Pixel Data, and the
    verbatim header copy, which took that order for the file's, left them out."""
    e = partial(_element, implicit=implicit)
    syntax = b"1.2.840.10008.1.2\0" if implicit else b"1.2.840.10008.1.2.1\0"
    src, out = _transcode(tmp_path, _part10(syntax, b"".join((
        e(0x00000002, "UI", b"1.2.840.10008.5.1.4.1.1.7\0"), e(0x00000100, "US", struct.pack("<H", 1)),
        e(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\0"), e(0x00080018, "UI", _SOP),
        _image_module(e, "<"), e(0x7FE00010, "OW", _pixels("<")),
    ))))
    data = out.read_bytes()
    assert b"\x00\x00\x02\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.7\0" in data
    assert b"\x00\x00\x00\x01US\x02\x00\x01\x00" in data
    assert data.index(b"\x00\x00\x00\x01US") < data.index(b"\x08\x00\x16\x00UI")  # in tag order
    assert_same_elements(src, out)
