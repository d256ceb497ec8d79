"""A data set's elements as Explicit VR Little Endian, value bytes unchanged.

pydicom converts an element to a Python value the moment it is touched and
encodes that value again when it writes: DS and IS lose their padding,
private UN elements are resolved through its private dictionary and
byte-swapped, ambiguous VRs are guessed. Correct values, other bytes. An
archive must give back the bytes it was given, so this module never
converts a value: it walks the encoded data set and re-frames each element.

- Implicit VR: the VR comes from the standard dictionary alone (PS3.5 7.1.3):
  private elements are UN (their creators LO), unknown ones UN, ambiguous
  ones resolved by the rules below; a value too long for a 2-byte length
  under its VR is written as UN, which has a 4-byte one.
- Big endian: only values whose VR fixes their byte order are swapped
  (PS3.5 7.3); UN and OB are bytes and stay as they are (PS3.5 6.2.2).
- Sequences are walked item by item and keep defined or undefined lengths
  as they had them (defined lengths recomputed where the content changed).
  A UN of undefined length holds Implicit VR Little Endian content whatever
  the transfer syntax (PS3.5 6.2.2): it is copied as it is.
- Group lengths inside a re-encoded implicit data set would be wrong and are
  dropped (they are retired, PS3.5 7.2); elsewhere they stay true and stay.

Anything that is not a well-formed data set raises `MalformedDataSet`: the
caller keeps such an instance as it is rather than write a copy that
differs from it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

import numpy as np
from pydicom.datadict import dictionary_VR

#: VRs with a 4-byte length after two reserved bytes (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
VRS = LONG_VRS | {
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST", "TM",
    "UI", "UL", "US",
}
#: Width of the words whose byte order a VR fixes; every other VR is bytes.
_WORD = {"AT": 2, "OW": 2, "SS": 2, "US": 2, "FL": 4, "OF": 4, "OL": 4, "SL": 4, "UL": 4,
         "FD": 8, "OD": 8, "OV": 8, "SV": 8, "UV": 8}
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: LUT Descriptors are "US or SS" in the dictionary; their values are counts
#: and bit depths, unsigned whatever the pixels are (PS3.3 C.11.1.1).
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002, 0x00289210, 0x00289211})
_SEQUENCE_END_LE = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_ITEM_END_LE = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)


class MalformedDataSet(ValueError):
    """The bytes are not a data set in the encoding they claim."""


@dataclass(frozen=True, slots=True)
class Encoding:
    """How a data set is encoded: Implicit or Explicit VR, byte order."""

    implicit: bool
    little: bool

    @property
    def changes_nothing(self) -> bool:
        """Explicit VR Little Endian already: every element's bytes are final."""
        return self.little and not self.implicit


#: Implicit VR Little Endian: the encoding of a UN value of undefined length.
IMPLICIT_LE = Encoding(implicit=True, little=True)


def element_header(tag: int, vr: str, length: int) -> bytes:
    """An Explicit VR Little Endian element header."""
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def implicit_vr(tag: int, pixel_representation: int) -> str:
    """The VR an Implicit VR element is written with: the dictionary's, UN
    for private and unknown elements (their creators are LO), and one
    choice for ambiguous entries that leaves the value bytes as they are."""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0:
        return "UL"  # group length
    if group & 1:
        return "LO" if 0x10 <= element <= 0xFF else "UN"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if " or " not in vr:
        return vr
    if "OW" in vr:  # OB or OW, US or OW, US or SS or OW: OW keeps little endian words as they are
        return "OW"
    # US or SS: signed with the pixels, except LUT Descriptors (PS3.5 A.1 c).
    return "SS" if pixel_representation == 1 and tag not in _LUT_DESCRIPTORS else "US"


class _Reader:
    """Reads a data set's bytes up to `limit` (exclusive) from a file object."""

    __slots__ = ("fp", "limit")

    def __init__(self, fp: BinaryIO, limit: int) -> None:
        self.fp, self.limit = fp, limit

    def more(self) -> bool:
        return self.fp.tell() < self.limit

    def take(self, n: int, what: str) -> bytes:
        if self.fp.tell() + n > self.limit:
            raise MalformedDataSet(f"{what} runs past the end of its data set")
        data = self.fp.read(n)
        if len(data) != n:
            raise MalformedDataSet(f"the file ends inside {what}")
        return data

    def skip(self, n: int, what: str) -> None:
        if self.fp.tell() + n > self.limit:
            raise MalformedDataSet(f"{what} runs past the end of its data set")
        self.fp.seek(n, 1)


@dataclass(frozen=True, slots=True)
class _Walk:
    encoding: Encoding
    pixel_representation: int

    def header(self, r: _Reader) -> tuple[int, str | None, int]:
        """Tag, VR (None for items, delimiters and Implicit VR) and length."""
        little = self.encoding.little
        group, element = struct.unpack("<HH" if little else ">HH", r.take(4, "an element's tag"))
        tag = group << 16 | element
        if group == 0xFFFE or self.encoding.implicit:
            (length,) = struct.unpack("<I" if little else ">I", r.take(4, f"({group:04X},{element:04X})"))
            return tag, None, length
        raw = r.take(2, f"({group:04X},{element:04X})")
        vr = raw.decode("latin-1")
        if vr not in VRS:
            raise MalformedDataSet(f"({group:04X},{element:04X}) has no valid VR ({raw!r})")
        if vr in LONG_VRS:
            (length,) = struct.unpack("<2xI" if little else ">2xI", r.take(6, f"({group:04X},{element:04X})"))
        else:
            (length,) = struct.unpack("<H" if little else ">H", r.take(2, f"({group:04X},{element:04X})"))
        return tag, vr, length

    def data_set(self, r: _Reader, *, until_item_end: bool) -> bytes:
        """The elements of one item as Explicit VR LE, up to the reader's
        limit or (undefined length) the Item Delimitation Item."""
        out = bytearray()
        while r.more() or until_item_end:
            tag, vr, length = self.header(r)
            if tag == ITEM_END and until_item_end:
                return bytes(out)
            if tag >> 16 == 0xFFFE:
                raise MalformedDataSet(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) inside a data set")
            if tag & 0xFFFF == 0 and self.encoding.implicit:
                r.skip(length, "a group length")  # its value would be wrong after re-encoding
                continue
            out += self.element(r, tag, vr, length)
        return bytes(out)

    def element(self, r: _Reader, tag: int, vr: str | None, length: int) -> bytes:
        """One element, read from `r` just past its header, as Explicit VR LE."""
        name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if vr is None:
            vr = implicit_vr(tag, self.pixel_representation)
        if length == UNDEFINED:
            if vr == "SQ":
                return element_header(tag, "SQ", UNDEFINED) + self.items(r, None, name) + _SEQUENCE_END_LE
            if vr == "UN":
                # A sequence nobody here knows (PS3.5 7.5.1): copied as it is,
                # since UN of undefined length holds Implicit VR LE (CP-246).
                return element_header(tag, "UN", UNDEFINED) + _verbatim_sequence(r, name)
            if vr in ("OB", "OW"):
                return element_header(tag, vr, UNDEFINED) + self.fragments(r, name)
            raise MalformedDataSet(f"{name} {vr} has an undefined length")
        if vr == "SQ":
            body = self.items(_Reader(BytesIO(r.take(length, name)), length), length, name)
            return element_header(tag, "SQ", len(body)) + body
        value = r.take(length, name)
        if not self.encoding.little and vr in _WORD:
            value = _swap(value, _WORD[vr], name)
        if vr not in LONG_VRS and len(value) > 0xFFFF:
            vr = "UN"
        return element_header(tag, vr, len(value)) + value

    def items(self, r: _Reader, length: int | None, name: str) -> bytes:
        """A sequence's items (without its delimiter): up to the reader's
        limit for a defined length, else up to the Sequence Delimitation Item."""
        out = bytearray()
        while length is None or r.more():
            tag, _, item_length = self.header(r)
            if tag == SEQUENCE_END and length is None:
                return bytes(out)
            if tag != ITEM:
                raise MalformedDataSet(f"{name}: expected an item, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if item_length == UNDEFINED:
                body = self.data_set(r, until_item_end=True)
                out += struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + body + _ITEM_END_LE
            else:
                inner = _Reader(BytesIO(r.take(item_length, f"an item of {name}")), item_length)
                body = self.data_set(inner, until_item_end=False)
                out += struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
        return bytes(out)

    def fragments(self, r: _Reader, name: str) -> bytes:
        """Encapsulated fragments, as they are, up to the Sequence Delimitation Item."""
        out = bytearray()
        while True:
            tag, _, length = self.header(r)
            if tag == SEQUENCE_END:
                return bytes(out + _SEQUENCE_END_LE)
            if tag != ITEM or length == UNDEFINED:
                raise MalformedDataSet(f"{name}: a fragment that is not an item of defined length")
            out += struct.pack("<HHI", 0xFFFE, 0xE000, length) + r.take(length, f"a fragment of {name}")

    def pass_over(self, r: _Reader, tag: int, vr: str | None, length: int) -> None:
        """Move past an element without keeping it; Pixel Data's value, or
        its fragments, are passed over without being read."""
        name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if length != UNDEFINED:
            r.skip(length, name)
        elif vr in ("OB", "OW") or (vr is None and implicit_vr(tag, 0) == "OW"):
            while True:  # fragments: item headers only
                item, _, item_length = self.header(r)
                if item == SEQUENCE_END:
                    return
                if item != ITEM or item_length == UNDEFINED:
                    raise MalformedDataSet(f"{name}: a fragment that is not an item of defined length")
                r.skip(item_length, f"a fragment of {name}")
        else:  # a sequence: its end is found by walking it
            self.element(r, tag, vr, length)


def _swap(value: bytes, width: int, name: str) -> bytes:
    """Big endian words of `width` bytes as little endian ones."""
    if len(value) % width:
        raise MalformedDataSet(f"{name}: {len(value)} bytes are not whole {width}-byte words")
    return np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def _verbatim_sequence(r: _Reader, name: str) -> bytes:
    """The Implicit VR LE items of a UN of undefined length, with their
    Sequence Delimitation Item, exactly as they are."""
    start = r.fp.tell()
    _Walk(IMPLICIT_LE, 0).items(r, None, name)  # only to find where it ends
    end = r.fp.tell()
    r.fp.seek(start)
    return r.take(end - start, name)


def explicit_le(
    fp: BinaryIO, start: int, end: int, encoding: Encoding, *, keep: Callable[[int], bool],
    pixel_representation: int = 0,
) -> Iterator[tuple[int, bytes]]:
    """(tag, Explicit VR LE bytes) of each top-level element of the data set
    at [start, end) of `fp` for which `keep(tag)`, in file order. The values
    of the others (Pixel Data) are passed over, never read."""
    walk, r = _Walk(encoding, pixel_representation), _Reader(fp, end)
    fp.seek(start)
    while r.more():
        tag, vr, length = walk.header(r)
        if tag >> 16 == 0xFFFE:
            raise MalformedDataSet(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) outside a sequence")
        if keep(tag):
            yield tag, walk.element(r, tag, vr, length)
        else:
            walk.pass_over(r, tag, vr, length)
