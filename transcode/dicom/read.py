"""Open a DICOM instance once and yield its frames lazily.

The data set is parsed a single time with Pixel Data left on disk
(`defer_size`), so a 2 GB multi-frame object costs one frame of memory.
Frames come from pydicom's decoder runner, fed a file object positioned at
the Pixel Data value: native frames are read with one seek each and
encapsulated ones fragment by fragment. Frames are the stored sample words:
no masking of bits above High Bit, no colour conversion, so that the
policy can look at exactly what the source holds.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from transcode.codecs.decode import register_plugins
from transcode.policy import Reason, fail, keep

PIXEL_DATA = 0x7FE00010
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
#: Values above this size stay on disk until they are needed.
DEFER_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class PixelSpec:
    """The Image Pixel module of an instance, as the decoder reads it."""

    transfer_syntax: UID
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    number_of_frames: int

    @property
    def frame_bytes(self) -> int:
        """Size of one decoded frame in memory (container words)."""
        return self.rows * self.columns * self.samples_per_pixel * max(1, self.bits_allocated // 8)


def _sniff(head: bytes) -> None:
    """Reject files that are not DICOM Part 10 before pydicom guesses at them."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return
    if head[:2] == b"\x02\x00":  # group 0002 without the 128-byte preamble
        return
    if head[:2] == b"\x08\x00":  # a bare data set starting at group 0008
        raise fail(
            Reason.MISSING_FILE_META,
            "no File Meta Information: the transfer syntax cannot be known for certain",
        )
    raise fail(Reason.NOT_DICOM, "neither a DICM prefix nor a File Meta group: not a DICOM file")


class Instance:
    """One source instance: its data set (Pixel Data left on disk) and frames."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] = open(path, "rb")
        try:
            self.dataset = self._read()
            #: The elements as parsed, before any access converts them: the
            #: writer copies these bytes (see dicom/write.py).
            self.raw = dict(self.dataset.items())
            self.spec = self._pixel_spec()
        except BaseException:
            self._file.close()
            raise

    def _read(self) -> FileDataset:
        _sniff(self._file.read(132))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = self._parse(DEFER_SIZE)
                if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                    # pydicom inflates these in memory: a deferred offset is
                    # not a file offset, so read the (rare) deflated set whole.
                    ds = self._parse(None)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
            raise fail(Reason.UNREADABLE, f"the data set cannot be parsed: {exc}") from exc
        # pydicom only warns when a file ends inside an element.
        truncated = [str(w.message) for w in caught if "End of file reached" in str(w.message)]
        if truncated or not len(ds):
            raise fail(Reason.UNREADABLE, f"truncated or empty data set: {truncated[0] if truncated else 'no element'}")
        if "TransferSyntaxUID" not in ds.file_meta:
            raise fail(Reason.MISSING_FILE_META, "File Meta Information has no Transfer Syntax UID")
        return ds

    def _parse(self, defer_size: int | None) -> FileDataset:
        self._file.seek(0)
        return pydicom.dcmread(self._file, defer_size=defer_size, force=True)

    @property
    def transfer_syntax(self) -> UID:
        return UID(self.dataset.file_meta.TransferSyntaxUID)

    @property
    def explicit_le_on_disk(self) -> bool:
        """Whether the file holds the data set as Explicit VR Little Endian
        bytes, so that element offsets are file offsets (not deflated)."""
        try:
            syntax = self.transfer_syntax
            return syntax != DeflatedExplicitVRLittleEndian and not syntax.is_implicit_VR and syntax.is_little_endian
        except (AttributeError, ValueError):  # no transfer syntax, or a UID that is not one
            return False

    def read_at(self, offset: int, length: int) -> bytes:
        """`length` bytes of the source file from `offset` (fewer at its end)."""
        return os.pread(self._file.fileno(), length, offset)

    def _pixel_spec(self) -> PixelSpec | None:
        ds = self.dataset
        if FLOAT_PIXEL_DATA in ds or DOUBLE_FLOAT_PIXEL_DATA in ds:
            raise keep(Reason.FLOAT_PIXELS, "float pixel data has no lossless HTJ2K form")
        if PIXEL_DATA not in ds:
            if "Rows" in ds and "BitsAllocated" in ds:
                raise fail(Reason.BAD_PIXEL_DATA, "Image Pixel module without Pixel Data: a truncated file?")
            return None
        try:
            opts = self._options = as_pixel_options(ds)
            spec = PixelSpec(
                transfer_syntax=self.transfer_syntax,
                rows=int(opts["rows"]),
                columns=int(opts["columns"]),
                samples_per_pixel=int(opts.get("samples_per_pixel", 1)),
                bits_allocated=int(opts["bits_allocated"]),
                bits_stored=int(opts.get("bits_stored", opts["bits_allocated"])),
                pixel_representation=int(opts.get("pixel_representation", 0)),
                photometric=str(opts.get("photometric_interpretation", "")).strip(),
                number_of_frames=int(opts["number_of_frames"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise fail(Reason.BAD_PIXEL_DATA, f"Image Pixel module incomplete or invalid: {exc}") from exc
        if spec.rows < 1 or spec.columns < 1 or spec.number_of_frames < 1:
            raise fail(Reason.BAD_PIXEL_DATA, f"{spec.rows}x{spec.columns}x{spec.number_of_frames} pixels")
        self._check_native_length(spec)
        return spec

    def _check_native_length(self, spec: PixelSpec) -> None:
        """Native Pixel Data must fit in the file: a header that claims more
        (say 4 GB) is refused before anything is allocated for it."""
        element = self.raw.get(PIXEL_DATA)
        tsyntax = spec.transfer_syntax
        if not tsyntax.is_transfer_syntax or tsyntax.is_encapsulated or not isinstance(element, RawDataElement):
            return
        if element.value is None and element.value_tell + element.length > os.fstat(self._file.fileno()).st_size:
            raise fail(
                Reason.BAD_PIXEL_DATA,
                f"Pixel Data claims {element.length:,} bytes; the file ends before that",
            )

    def _pixel_source(self, file: IO[bytes] | None = None) -> IO[bytes] | bytes:
        """The Pixel Data value: the file (`file`, else the instance's own)
        positioned at it when it is still on disk, else the bytes (small
        values and deflated data sets)."""
        element = self.raw.get(PIXEL_DATA)
        if isinstance(element, RawDataElement) and element.value is None:
            file = file or self._file
            file.seek(element.value_tell)
            return file
        return self.dataset.PixelData

    def _check_items(self) -> None:
        """Encapsulated Pixel Data must be items that end exactly at the
        Sequence Delimiter. Decoders forgive a fragment length that runs past
        it; an archive should not: the file is damaged, whatever decodes."""
        source = self._pixel_source()
        buf = source if isinstance(source, bytes) else None
        size = len(buf) if buf is not None else os.fstat(self._file.fileno()).st_size
        pos = 0 if buf is not None else self._file.tell()
        while True:
            if buf is not None and pos == size:
                return  # an in-memory value ends where its delimiter was
            head = buf[pos : pos + 8] if buf is not None else self._file.read(8)
            if len(head) < 8:
                raise fail(Reason.BAD_PIXEL_DATA, "encapsulated Pixel Data ends without a Sequence Delimiter")
            group, element, length = struct.unpack("<HHI", head)
            if (group, element) == (0xFFFE, 0xE0DD):
                return
            if (group, element) != (0xFFFE, 0xE000):
                raise fail(Reason.BAD_PIXEL_DATA, f"expected an item in Pixel Data, found ({group:04X},{element:04X})")
            pos += 8 + length
            if pos > size:
                raise fail(Reason.BAD_PIXEL_DATA, f"a Pixel Data item of {length} bytes runs past the end of the data")
            if buf is None:
                self._file.seek(pos)

    def frames(self) -> Iterator[np.ndarray]:
        """Yield each frame's stored words: (rows, columns[, samples]), one
        frame in memory at a time."""
        spec = self.spec
        if spec is None:
            return
        register_plugins()
        tsyntax = spec.transfer_syntax
        if tsyntax.is_encapsulated:
            self._check_items()
        opts = dict(self._options)
        # An inflated deflated data set holds native little endian pixels.
        deflated = tsyntax == DeflatedExplicitVRLittleEndian
        opts["transfer_syntax_uid"] = ExplicitVRLittleEndian if deflated else tsyntax
        opts["pixel_keyword"] = "PixelData"
        element = self.raw.get(PIXEL_DATA)
        if not tsyntax.is_implicit_VR and element is not None and element.VR:
            opts["pixel_vr"] = element.VR
        frames = get_decoder(tsyntax).iter_array(
            # view_only: native frames are not copied; canonical_words copies if it must.
            self._pixel_source(), raw=True, validate=True, correct_unused_bits=False, view_only=True, **opts
        )
        while True:
            try:
                arr, _props = next(frames)
            except StopIteration:
                return
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # any decoder's complaint; Rust ones (pylibjpeg-rle) panic with a BaseException
                raise fail(Reason.DECODE_ERROR, f"cannot decode the source pixel data: {exc}") from exc
            # Big endian sources come as big endian arrays; codecs want native order.
            yield arr.astype(arr.dtype.newbyteorder("="), copy=False)

    def codestreams(self) -> Iterator[bytes]:
        """Yield each frame's encoded bytes, for encapsulated transfer syntaxes."""
        spec = self.spec
        if spec is None or not spec.transfer_syntax.is_encapsulated:
            return
        extended = None
        if EXTENDED_OFFSET_TABLE in self.dataset and EXTENDED_OFFSET_TABLE_LENGTHS in self.dataset:
            extended = (self.dataset.ExtendedOffsetTable, self.dataset.ExtendedOffsetTableLengths)
        try:
            # A handle of its own: `frames()` may be reading the instance's file meanwhile.
            with open(self.path, "rb") as file:
                yield from generate_frames(
                    self._pixel_source(file), number_of_frames=spec.number_of_frames, extended_offsets=extended
                )
        except (ValueError, EOFError, struct.error) as exc:
            raise fail(Reason.BAD_PIXEL_DATA, f"encapsulated Pixel Data is malformed: {exc}") from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_instance(path: str | Path) -> Instance:
    """Open `path`; raises `policy.Stop` with a reason for anything unusable."""
    try:
        return Instance(Path(path))
    except OSError as exc:
        raise fail(Reason.UNREADABLE, f"cannot open the file: {exc.strerror or exc}") from exc
