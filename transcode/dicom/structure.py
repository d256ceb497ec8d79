"""Walk a data set's element structure, independently of pydicom.

pydicom reads what it can: it seeks past a deferred value that the file
cuts short, and only warns when a file ends inside a sequence, so a file cut
at any byte can come out of it as a data set that looks complete. This walk
reads element headers only, the way a strict parser such as dcmtk does:
every element, item and sequence must end inside the file, every
undefined-length sequence and item must reach its delimiter, and the walk
must end exactly at the end of the file. It answers one of three things:

- the data set is whole (`Walk`, with the top-level elements' positions);
- `Truncated`: the file ends inside an element, an item or a sequence;
- `Unfollowable`: the bytes are not a structure this walk can follow (an
  item where none belongs, an undefined length where none may be): no
  verdict, the caller keeps whatever pydicom made of the file.

An explicit VR element whose VR is not a standard one is read with a 2-byte
length, as dcmtk does ("non-standard VR ... assuming 2 byte length field").

Values are skipped by their length, never read, so the cost is one
`struct` unpack per element header (Pixel Data items included), whatever
the size of the values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from transcode.dicom import elements
from transcode.dicom.elements import ITEM, ITEM_END, SEQUENCE_END, UNDEFINED

#: VRs as the bytes of a header: with a 4-byte length (PS3.5 7.1.2), and the others.
LONG_VRS = frozenset(vr.encode() for vr in elements.LONG_VRS)
SHORT_VRS = frozenset(vr.encode() for vr in elements.VRS - elements.LONG_VRS)
#: VRs that may have an undefined length: sequences, UN holding one, encapsulated pixels.
_OPEN_VRS = frozenset({b"SQ", b"UN", b"OB", b"OW"})
_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
META_GROUP = 0x0002
TRANSFER_SYNTAX = 0x00020010


class Truncated(ValueError):
    """The file ends before its data set does."""


class Unfollowable(ValueError):
    """The bytes are not an element structure this walk can follow."""


@dataclass(frozen=True, slots=True)
class Walk:
    """A data set read whole: each top-level element's tag with the
    position and length of its value (undefined-length elements: length
    None), in file order."""

    elements: dict[int, tuple[int, int | None]]

    def value(self, data: bytes | memoryview, tag: int) -> bytes | None:
        """The raw value of a top-level element of defined length, or None."""
        position, length = self.elements.get(tag, (0, None))
        return None if length is None else bytes(data[position : position + length])


@dataclass(slots=True)
class _Open:
    """A sequence (items expected) or an item (elements expected) whose
    delimiter is still to come."""

    sequence: bool
    tag: int
    at: int
    implicit: bool
    little: bool


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def walk(data: bytes | memoryview, start: int, syntax: UID) -> Walk:
    """Walk the data set that starts at `start` in `syntax` (Implicit VR
    Little Endian, or an explicit VR syntax: little endian unless it is
    Explicit VR Big Endian) to the end of `data`; raises `Truncated` or
    `Unfollowable` (see the module's docstring)."""
    outer = (syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)
    implicit, little = outer
    tag_of, u16, u32 = _TAG[little].unpack_from, _U16[little].unpack_from, _U32[little].unpack_from
    end, pos = len(data), start
    opened: list[_Open] = []
    top: dict[int, tuple[int, int | None]] = {}
    while pos < end:
        if end - pos < 8:
            raise Truncated(f"the file ends inside an element header at byte {pos}")
        group, element = tag_of(data, pos)
        tag = group << 16 | element
        if group == 0xFFFE:
            inner = opened[-1] if opened else None
            length = u32(data, pos + 4)[0]
            if tag == ITEM and inner is not None and inner.sequence:
                if length == UNDEFINED:
                    opened.append(_Open(False, tag, pos, implicit, little))
                    pos += 8
                    continue
                if length > end - pos - 8:
                    raise Truncated(f"an item of {length:,} bytes at byte {pos} runs past the end of the file "
                                    f"({end - pos - 8:,} bytes left)")
                pos += 8 + length
                continue
            if (tag == SEQUENCE_END and inner is not None and inner.sequence) or (
                    tag == ITEM_END and inner is not None and not inner.sequence):
                opened.pop()
                pos += 8
                implicit, little = (opened[-1].implicit, opened[-1].little) if opened else outer
                tag_of, u16, u32 = _TAG[little].unpack_from, _U16[little].unpack_from, _U32[little].unpack_from
                continue
            raise Unfollowable(f"{_name(tag)} at byte {pos} where it does not belong")
        if opened and opened[-1].sequence:
            raise Unfollowable(f"{_name(tag)} at byte {pos} inside a sequence, where an item belongs")
        if implicit:
            vr, length, header = None, u32(data, pos + 4)[0], 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                if end - pos < 12:
                    raise Truncated(f"the file ends inside the header of {_name(tag)} at byte {pos}")
                length, header = u32(data, pos + 8)[0], 12
            else:  # a standard short VR, or one that is not a VR: a 2-byte length, as dcmtk reads it
                length, header = u16(data, pos + 6)[0], 8
        if length == UNDEFINED:
            if vr is not None and vr not in _OPEN_VRS:
                raise Unfollowable(f"{_name(tag)} at byte {pos}: undefined length with VR {bytes(vr).decode()}")
            if not opened:
                top[tag] = (pos + header, None)
            if vr == b"UN":  # its content is Implicit VR Little Endian (PS3.5 6.2.2)
                implicit, little = True, True
                tag_of, u16, u32 = _TAG[little].unpack_from, _U16[little].unpack_from, _U32[little].unpack_from
            opened.append(_Open(True, tag, pos, implicit, little))
            pos += header
            continue
        if length > end - pos - header:
            raise Truncated(f"{_name(tag)} at byte {pos} claims {length:,} bytes; the file ends "
                            f"{length - (end - pos - header):,} bytes short of that")
        if not opened:
            top[tag] = (pos + header, length)
        pos += header + length
    if opened:
        what = "sequence" if opened[-1].sequence else "item"
        raise Truncated(f"the file ends inside the {what} {_name(opened[-1].tag)} opened at byte {opened[-1].at}")
    return Walk(top)


def meta_end(data: bytes | memoryview, start: int) -> tuple[int, str | None]:
    """Where the File Meta group (Explicit VR Little Endian; Implicit VR
    element by element where no VR follows a tag, as some old writers left
    it and dcmtk and pydicom read it) that starts at `start` ends, and its
    Transfer Syntax UID if it has one; raises `Truncated`."""
    pos, syntax = start, None
    while len(data) - pos >= 8 and _TAG[True].unpack_from(data, pos)[0] == META_GROUP:
        value_at, after = _element_span(data, pos)
        if after > len(data):
            raise Truncated(f"the file ends inside the File Meta element at byte {pos}")
        if _TAG[True].unpack_from(data, pos) == (META_GROUP, TRANSFER_SYNTAX & 0xFFFF):
            syntax = bytes(data[value_at:after]).decode("ascii", "replace").rstrip("\0 ")
        pos = after
    if pos == len(data):
        raise Truncated("the file ends with its File Meta Information: no data set follows")
    return pos, syntax


def _element_span(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Where the value of the File Meta element (defined length) at `pos`
    starts and ends: explicit VR little endian, or implicit where no VR
    follows the tag."""
    vr = bytes(data[pos + 4 : pos + 6])
    if vr in LONG_VRS:
        if len(data) - pos < 12:
            raise Truncated(f"the file ends inside a File Meta element header at byte {pos}")
        return pos + 12, pos + 12 + _U32[True].unpack_from(data, pos + 8)[0]
    if vr in SHORT_VRS:
        return pos + 8, pos + 8 + _U16[True].unpack_from(data, pos + 6)[0]
    return pos + 8, pos + 8 + _U32[True].unpack_from(data, pos + 4)[0]


def data_set_syntax(data: bytes | memoryview, start: int, syntax: UID) -> UID:
    """The encoding of the data set at `start` whose File Meta names
    `syntax`, as pydicom reads it (writers that mislabel their data sets
    exist): an explicit VR little endian syntax whose first element has no
    VR after its tag is Implicit VR Little Endian in fact; Implicit VR
    Little Endian whose first element has one, and that reads whole as
    Explicit VR Little Endian, is that."""
    if not syntax.is_little_endian or len(data) - start < 8:
        return syntax
    explicit = bytes(data[start + 4 : start + 6]) in LONG_VRS | SHORT_VRS
    if not syntax.is_implicit_VR:
        return syntax if explicit else UID(ImplicitVRLittleEndian)
    if explicit:
        try:
            walk(data, start, ExplicitVRLittleEndian)
        except (Truncated, Unfollowable):
            return syntax  # a length that happens to spell a VR
        return UID(ExplicitVRLittleEndian)
    return syntax


def guess_syntax(data: bytes | memoryview, start: int) -> UID | None:
    """The encoding of a data set that has no File Meta to name it, as
    dcmtk guesses it: the first element's group (0008, little or big
    endian) and whether a VR follows its tag; the guess must then walk the
    whole file. None when no guess is whole; raises `Truncated` when the
    likeliest guess is a data set that the file cuts short."""
    if len(data) - start < 8:
        return None
    explicit = bytes(data[start + 4 : start + 6]) in LONG_VRS | SHORT_VRS
    candidates = []
    if _TAG[True].unpack_from(data, start)[0] == 0x0008:
        candidates += [ExplicitVRLittleEndian] * explicit + [ImplicitVRLittleEndian]
    elif _TAG[False].unpack_from(data, start)[0] == 0x0008 and explicit:
        candidates.append(ExplicitVRBigEndian)
    cut: Truncated | None = None
    for syntax in candidates:
        try:
            walk(data, start, syntax)
        except Truncated as exc:
            cut = cut or exc
        except Unfollowable:
            continue
        else:
            return UID(syntax)
    if cut is not None and candidates:
        raise cut
    return None
