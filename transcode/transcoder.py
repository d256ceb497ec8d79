"""Transcode one instance: read, decode, encode, verify, write.

Frames flow one way: the calling thread reads and decodes a source frame,
checks its stored bits and hands it to a thread pool to encode (imagecodecs
releases the GIL, so all cores work), hashes it meanwhile, then writes each
encoded frame in order while the pool verifies it. Each stage holds a
bounded window of frames (`_window`), so memory follows frame size and core
count, never instance size. Nothing is published before every check passed.

The header decides first: a frame larger than `EncodeSettings.max_frame_bytes`
is kept as is before anything is decoded. The frames `verify.CrossCheck`
selects are also decoded by independent decoders, the output by OpenJPEG and
a JPEG Lossless or RLE source by its second decoder, on the pool.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import UID, HTJ2KLosslessRPCL, MediaStorageDirectoryStorage

from transcode import logs
from transcode.codecs import htj2k
from transcode.codecs.codestream import CodestreamIndex
from transcode.codecs.decode import independent_name
from transcode.codecs.htj2k import EncodeSettings
from transcode.dicom.elements import MalformedDataSet
from transcode.dicom.metadata import DicomJson, dicom_json
from transcode.dicom.read import Instance, PixelSpec, open_instance
from transcode.dicom.write import EncapsulatedWriter, copy_atomically, file_meta
from transcode.digest import Digest, frame_digest
from transcode.entries import path_text
from transcode.policy import LOSSLESS_SOURCES, LOSSLESS_UNDECODED, Outcome, Reason, Stop, fail, keep
from transcode.runtime import frame_pool, release_freed
from transcode.verify import SAMPLER, CrossCheck, crosscheck_frame, crosscheck_source, verify_frame

log = logging.getLogger(__name__)
OUTPUT_SYNTAX = UID(HTJ2KLosslessRPCL)
_SUBSAMPLED = ("YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420")
_COLOUR_TRANSFORM = ("RGB", "YBR_RCT")  # decoded as RGB; stored as YBR_RCT
_SUPPORTED = {1: ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"), 3: ("RGB", "YBR_RCT", "YBR_FULL")}


@dataclass
class TranscodeResult:
    """What happened to one instance. `reason` and `detail` are set unless
    the outcome is transcoded; digests are "blake3:<hex>" (see digest.py)."""

    source: str
    destination: str | None
    outcome: Outcome
    reason: Reason | None = None
    detail: str = ""
    transfer_syntax: str | None = None
    frames: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    pixel_digest: str | None = None
    output_digest: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    frame_index: list[CodestreamIndex] = field(default_factory=list, repr=False)
    #: (offset, length) of each frame's codestream inside the output file
    frame_spans: list[tuple[int, int]] = field(default_factory=list, repr=False)
    #: digest of each frame's codestream as stored (the server checks every read against it)
    frame_digests: list[str] = field(default_factory=list, repr=False)
    #: The source had no File Meta naming its transfer syntax: the stored
    #: object has File Meta built from its data set (see `dicom.read.Instance`)
    file_meta_constructed: bool = False
    #: DICOM JSON of the instance as stored (with `metadata=True`: of a
    #: transcoded one, or of one kept as is that pydicom cannot parse)
    metadata: DicomJson | None = field(default=None, repr=False)

    @property
    def ratio(self) -> float | None:
        """Output size over input size (lower is better)."""
        return self.bytes_out / self.bytes_in if self.bytes_in and self.bytes_out else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = self.outcome.value
        d["reason"] = self.reason.value if self.reason else None
        d["frame_index"] = [ix.to_dict() for ix in self.frame_index]
        d.pop("metadata")
        return d


def _check_identity(instance: Instance) -> None:
    """An instance is archived only with a SOP Instance UID. A DICOMDIR has
    one in its File Meta only: it is an index of files, not an instance."""
    ds = instance.dataset
    if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
        raise fail(Reason.NO_SOP_INSTANCE_UID, "a DICOMDIR (Media Storage Directory): it lists files and is not an "
                   "instance; named DICOMDIR, ingest reads it as the list of the files it references")
    try:
        uid = ds.get("SOPInstanceUID")
    except (NotImplementedError, ValueError) as exc:  # NotImplementedError: pydicom's word for a VR code that is no VR
        raise fail(Reason.NO_SOP_INSTANCE_UID, f"the SOP Instance UID cannot be read ({exc}): the instance has no "
                   "identity to keep") from exc
    if not (uid or ds.file_meta.get("MediaStorageSOPInstanceUID")):
        raise fail(Reason.NO_SOP_INSTANCE_UID, "no SOP Instance UID: the instance has no identity to keep")


def _check_parsed(instance: Instance) -> None:
    """Where pydicom could not parse the instance (`Instance.unparsed`), it is kept as received."""
    if instance.unparsed is not None:
        raise keep(Reason.READER_ERROR, f"pydicom cannot parse the data set ({instance.unparsed}), which a strict "
                   "walk of its structure reads whole: kept as received, indexed by its identifying elements")


@dataclass
class _Copy:
    """How a copy of the source is made when it is kept: `prefix` (a
    preamble and constructed File Meta, where the source has none that
    names its transfer syntax) and the source's bytes from `start`."""

    prefix: bytes = b""
    start: int = 0
    metadata: DicomJson | None = None

    def plan(self, instance: Instance) -> None:
        """Set the copy up for `instance` (opened, its identity checked)."""
        self.metadata = dicom_json(instance.dataset) if instance.unparsed is not None else None
        if instance.meta_constructed:
            preamble = instance.dataset.preamble
            try:
                meta = file_meta(instance.dataset, instance.transfer_syntax)
            except ValueError as exc:  # no SOP Class UID to name in it
                raise fail(Reason.MISSING_FILE_META, f"no File Meta, and none can be built: {exc}") from exc
            self.prefix = b"".join((preamble if preamble and len(preamble) == 128 else bytes(128), b"DICM", meta))
            self.start = instance.data_set_start


def _check_policy(spec: PixelSpec | None, settings: EncodeSettings, crosscheck: CrossCheck) -> None:
    """Decide from the header alone whether the pixels may be transcoded."""
    if spec is None:
        raise keep(Reason.NO_PIXEL_DATA, "no Pixel Data: nothing to transcode")
    ts = spec.transfer_syntax
    if ts not in LOSSLESS_SOURCES:
        if ts.is_transfer_syntax and ts.is_compressed and ts not in LOSSLESS_UNDECODED:
            raise keep(Reason.LOSSY_SOURCE, f"{ts.name} is (or may be) lossy: recompressing would compound the loss")
        raise keep(Reason.UNSUPPORTED_TRANSFER_SYNTAX, f"transfer syntax {ts} is not one this pipeline decodes")
    if spec.bits_allocated == 1:
        raise keep(Reason.ONE_BIT_PIXELS, "1-bit pixel data is kept as is (bit-packed, HTJ2K gains nothing)")
    if spec.bits_allocated not in (8, 16, 32):
        raise keep(Reason.UNSUPPORTED_PIXEL_FORMAT, f"Bits Allocated {spec.bits_allocated} has no HTJ2K container")
    if not 1 <= spec.bits_stored <= spec.bits_allocated:
        raise keep(Reason.BAD_PIXEL_DATA, f"Bits Stored {spec.bits_stored} with Bits Allocated {spec.bits_allocated}")
    if spec.photometric == "YBR_ICT":
        raise keep(Reason.LOSSY_SOURCE, "YBR_ICT means the irreversible colour transform: lossy")
    if spec.photometric in _SUBSAMPLED:
        raise keep(Reason.CHROMA_SUBSAMPLED, f"{spec.photometric} is chroma-subsampled: no lossless HTJ2K form")
    if spec.photometric not in _SUPPORTED.get(spec.samples_per_pixel, ()):
        raise keep(
            Reason.UNSUPPORTED_PIXEL_FORMAT,
            f"{spec.samples_per_pixel} samples per pixel with {spec.photometric or 'no'} Photometric Interpretation",
        )
    if spec.frame_bytes > settings.max_frame_bytes:
        raise keep(
            Reason.FRAME_TOO_LARGE,
            f"one frame of {spec.rows}x{spec.columns}x{spec.samples_per_pixel} samples of {spec.bits_allocated} bits "
            f"is {spec.frame_bytes:,} bytes decoded, over the cap of {settings.max_frame_bytes:,} bytes "
            "(--max-frame-mb)",
        )
    _check_provable(spec, crosscheck)


#: OpenJPEG, the second decoder, opens components of at most 31 bits (its SIZ check).
OPENJPEG_MAX_BITS = 31


def _check_provable(spec: PixelSpec, crosscheck: CrossCheck) -> None:
    """Keep before encoding what the second decoder can never read back:
    frames are encoded at their container width, so 32-bit frames (RT Dose)
    come out 32-bit, which OpenJPEG refuses whatever the values. Encoding
    them anyway cost two encodes (the second on one thread, as if a codec
    had misbehaved) for the same outcome."""
    if crosscheck is not CrossCheck.NONE and spec.bits_allocated > OPENJPEG_MAX_BITS:
        raise keep(Reason.INDEPENDENT_DECODER_MISMATCH,
                   f"{spec.bits_allocated}-bit frames would be {spec.bits_allocated}-bit HTJ2K, and OpenJPEG, the "
                   f"second decoder, opens at most {OPENJPEG_MAX_BITS}-bit components: no frame could be "
                   "cross-checked (--crosscheck none transcodes them, proven by OpenJPH alone)", from_header=True)


def canonical_words(frame: np.ndarray, spec: PixelSpec, index: int) -> np.ndarray:
    """The frame's pixel values as full container words, or `Stop` (kept).

    Bits above High Bit must carry nothing, or they are data (overlays,
    junk) that a decoder would mask away. Unsigned: they must be zero.
    Signed: a plain sign extension; all-zero upper bits are the other common
    way to leave them unused, and those frames are sign-extended (a copy),
    which is what every DICOM reader does with them (PS3.5 8.1.1).
    """
    unused = spec.bits_allocated - spec.bits_stored
    if not unused or frame.size == 0:
        return frame
    # Range checks: one SIMD pass each, no temporary arrays.
    if not spec.pixel_representation:
        if int(frame.max()) >> spec.bits_stored:
            raise _bits_above_high_bit(spec, index)
        return frame
    limit = 1 << (spec.bits_stored - 1)
    if -limit <= int(frame.min()) and int(frame.max()) < limit:
        return frame  # sign-extended already
    if int(frame.view(frame.dtype.str.replace("i", "u")).max()) >> spec.bits_stored:
        raise _bits_above_high_bit(spec, index)
    extended = frame << unused
    extended >>= unused
    return extended


def _bits_above_high_bit(spec: PixelSpec, index: int) -> Stop:
    return keep(
        Reason.BITS_ABOVE_HIGH_BIT,
        f"frame {index}: stored words use bits above High Bit {spec.bits_stored - 1} "
        "(overlay or other data that decoders would mask away)",
    )


def _encode(frame: np.ndarray, index: int, colour_transform: bool, settings: EncodeSettings) -> tuple[bytes, CodestreamIndex]:
    try:
        return htj2k.encode(frame, colour_transform=colour_transform, settings=settings)
    except Exception as exc:
        raise keep(Reason.ENCODER_ERROR, f"frame {index}: OpenJPH could not encode it: {exc}") from exc


#: Frames in flight are bounded by bytes as well as by count: small frames
#: need a deeper queue to keep every core busy, large ones must not fill RAM.
WINDOW_BYTES = 32 << 20


def _window(spec: PixelSpec | None, workers: int) -> int:
    """How many frames may wait at each stage (encoding, checking)."""
    if spec is None:
        return workers
    return max(workers, min(4 * workers, WINDOW_BYTES // spec.frame_bytes))


def _format(spec: PixelSpec, settings: EncodeSettings) -> tuple[Any, ...]:
    """What a cross-check of one frame speaks for (see `verify.CrossCheck`):
    the source's syntax (its decoders) and what the output codestream's
    coding parameters depend on."""
    return (
        str(spec.transfer_syntax), spec.bits_allocated, spec.pixel_representation, spec.samples_per_pixel,
        spec.photometric in _COLOUR_TRANSFORM, settings.tile_for(spec.columns, spec.rows),
        htj2k.decompositions_for(spec.columns, spec.rows),
    )


def _pixel_options(spec: PixelSpec, dataset: Any) -> dict[str, Any]:
    """pydicom's pixel options of one frame, for the independent source decoder."""
    return {
        "planar_configuration": int(dataset.get("PlanarConfiguration", 0) or 0),
        "rows": spec.rows, "columns": spec.columns, "samples_per_pixel": spec.samples_per_pixel,
        "bits_allocated": spec.bits_allocated, "bits_stored": spec.bits_stored,
        "pixel_representation": spec.pixel_representation, "photometric_interpretation": spec.photometric,
    }


def _crosscheck(source: np.ndarray, data: bytes, index: int, fmt: tuple[Any, ...]) -> None:
    crosscheck_frame(source, data, index=index)
    SAMPLER.passed(fmt)


def _changes(spec: PixelSpec, dataset: Any) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if spec.photometric in _COLOUR_TRANSFORM:
        changes["PhotometricInterpretation"] = "YBR_RCT"
    if spec.samples_per_pixel > 1 and dataset.get("PlanarConfiguration", 0) != 0:
        changes["PlanarConfiguration"] = 0
    return changes


def _transcode_frames(
    instance: Instance,
    dst: Path,
    result: TranscodeResult,
    settings: EncodeSettings,
    crosscheck: CrossCheck,
    pool: Executor,
    window: int,
    *,
    durable: bool,
    metadata: bool,
) -> None:
    """Encode every frame on the pool, then write it while the pool proves it.

    A frame is written as soon as it is encoded, in order, while its
    verification (and cross-check) runs; nothing is committed before every
    check has passed, and a failed check aborts the file.
    """
    spec = instance.spec
    assert spec is not None
    colour = spec.photometric in _COLOUR_TRANSFORM
    fmt = _format(spec, settings)
    digest = Digest()
    encoding: deque[tuple[int, np.ndarray, bool, Future[tuple[bytes, CodestreamIndex]]]] = deque()
    checks: deque[Future[None]] = deque()
    # The source's own codestreams, for its independent decoder (if it has one):
    # each is read right after the primary decoder read it, from the page cache.
    tsyntax = spec.transfer_syntax
    codestreams = instance.codestreams() if independent_name(tsyntax) and crosscheck is not CrossCheck.NONE else None
    options = _pixel_options(spec, instance.dataset)

    def settle(limit: int) -> None:
        while len(checks) > limit:
            checks.popleft().result()

    changes = _changes(spec, instance.dataset)
    with EncapsulatedWriter(
        dst, instance, transfer_syntax=OUTPUT_SYNTAX, frames=spec.number_of_frames, changes=changes, durable=durable,
    ) as writer:

        def drain(limit: int) -> None:
            while len(encoding) > limit:
                i, frame, due, encoded = encoding.popleft()
                data, cs_index = encoded.result()
                checks.append(pool.submit(verify_frame, frame, data, index=i))
                if due:
                    checks.append(pool.submit(_crosscheck, frame, data, i, fmt))
                writer.add_frame(data)
                result.frame_index.append(cs_index)
                result.frame_digests.append(frame_digest(data, cs_index))
                settle(window)
                release_freed(spec.frame_bytes)

        try:
            for i, frame in enumerate(instance.frames()):
                if i >= spec.number_of_frames:
                    raise keep(Reason.BAD_PIXEL_DATA, f"more frames than Number of Frames ({spec.number_of_frames})")
                stored = np.ascontiguousarray(frame)
                codestream = next(codestreams, None) if codestreams is not None else None
                due = SAMPLER.due(crosscheck, fmt, i)
                if due and codestream is not None:
                    checks.append(pool.submit(crosscheck_source, stored, codestream, tsyntax, options, index=i))
                frame = canonical_words(stored, spec, i)
                encoding.append((i, frame, due, pool.submit(_encode, frame, i, colour, settings)))
                # While the pool encodes: hash (BLAKE3 releases the GIL) and, once,
                # write the head and describe the instance.
                digest.update(frame.data)
                if i == 0:
                    writer.begin()
                    if metadata:
                        result.metadata = dicom_json(instance.dataset, changes, instance.raw)
                drain(window)
            drain(0)
            if len(result.frame_index) != spec.number_of_frames:
                raise keep(
                    Reason.BAD_PIXEL_DATA,
                    f"{len(result.frame_index)} frames decoded, Number of Frames says {spec.number_of_frames}",
                )
            writer.finish()  # fsync and digest while the last checks run
            settle(0)
        finally:
            for *_, future in encoding:
                future.cancel()
            for future in checks:
                future.cancel()
            if codestreams is not None:
                codestreams.close()
        result.output_digest = writer.commit()
        result.frame_spans = writer.frame_spans
    result.frames = spec.number_of_frames
    result.pixel_digest = digest.hexdigest()


#: Reasons that may come from a codec misbehaving under concurrency.
_CODEC_DOUBTS = frozenset({Reason.VERIFY_MISMATCH, Reason.ENCODER_ERROR, Reason.INDEPENDENT_DECODER_MISMATCH,
                           Reason.SOURCE_DECODERS_DISAGREE})


def _attempt(
    src: Path, dst: Path, result: TranscodeResult, settings: EncodeSettings, durable: bool, metadata: bool,
    copy: _Copy, crosscheck: CrossCheck, workers: int,
) -> None:
    """One pass over the instance with `workers` threads; raises Stop, and
    fills in `copy` for the instance kept as is, once its identity is read.
    An unexpected error after that keeps the instance (`transcode_error`):
    a readable instance is archived, whatever went wrong in this code."""
    result.frame_index, result.frame_spans, result.frame_digests = [], [], []
    with open_instance(src) as instance:
        result.transfer_syntax = str(instance.transfer_syntax)
        result.file_meta_constructed = instance.meta_constructed
        if instance.meta_constructed:
            result.detail = (f"no File Meta naming the transfer syntax: the data set reads whole as "
                             f"{instance.transfer_syntax.name}, and File Meta was built for it")
        if instance.mislabelled:
            result.detail = instance.mislabelled
        _check_identity(instance)
        copy.plan(instance)
        _check_parsed(instance)
        try:
            _check_policy(instance.spec, settings, crosscheck)
            _transcode_frames(
                instance, dst, result, settings, crosscheck, frame_pool(workers), _window(instance.spec, workers),
                durable=durable, metadata=metadata,
            )
        except MalformedDataSet as exc:
            raise keep(Reason.MALFORMED_DATA_SET, f"the data set cannot be copied byte for byte: {exc}") from exc
        except (Stop, OSError):
            raise
        except Exception as exc:
            log.exception("%s: unexpected error; the instance is kept as received", src)
            raise keep(Reason.TRANSCODE_ERROR, f"unexpected {type(exc).__name__}: {exc}") from exc


def transcode_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    settings: EncodeSettings | None = None,
    crosscheck: CrossCheck | str = CrossCheck.SAMPLE,
    workers: int | None = None,
    copy_kept: bool = True,
    durable: bool = True,
    metadata: bool = False,
) -> TranscodeResult:
    """Transcode the DICOM file `src` to HTJ2K Lossless RPCL at `dst`.

    Never raises for bad input: the result says transcoded, kept (with
    `copy_kept`, `dst` is then an exact copy of `src`) or failed (nothing at
    `dst`). The source is only ever opened for reading.

    `durable=False` skips the fsyncs, for a staging file whose caller makes
    it durable itself (the ingest coordinator, off the workers' critical
    path). `metadata=True` also returns the stored instance's DICOM JSON,
    from the one parse of the source.
    """
    started = time.perf_counter()
    src_path, dst_path = Path(src), Path(dst)
    result = TranscodeResult(source=path_text(src_path), destination=None, outcome=Outcome.FAILED)
    settings = settings or EncodeSettings()
    crosscheck = CrossCheck(crosscheck)
    workers = workers or os.cpu_count() or 1
    with logs.reading(result.source):
        try:
            try:
                result.bytes_in = src_path.stat().st_size
            except OSError as exc:  # a missing source (a dangling link) is not a write error
                raise fail(Reason.UNREADABLE, f"cannot open the file: {exc.strerror or exc}") from exc
            if dst_path.exists() and dst_path.resolve() == src_path.resolve():
                raise fail(Reason.WRITE_ERROR, "destination is the source file: the source is never modified")
            if not dst_path.parent.is_dir():
                raise fail(Reason.WRITE_ERROR, f"destination folder {dst_path.parent} does not exist")
            copy = _Copy()
            attempt = partial(_attempt, src_path, dst_path, result, settings, durable, metadata, copy)
            try:
                attempt(crosscheck, workers)
            except Stop as stop:
                if stop.reason not in _CODEC_DOUBTS or stop.from_header or workers == 1:
                    raise
                # Seen here, rarely: a codec call failing or returning other pixels
                # while other threads ran codecs too. Prove it again on one thread,
                # every frame cross-checked (a sampled frame that failed must not
                # escape its check); a real problem fails the same way and keeps it.
                log.warning("%s: %s with %d threads; retrying on one thread", src_path, stop.detail, workers)
                attempt(CrossCheck.NONE if crosscheck is CrossCheck.NONE else CrossCheck.ALL, 1)
            result.outcome = Outcome.TRANSCODED
            result.destination = str(dst_path)
            result.bytes_out = dst_path.stat().st_size
        except Stop as stop:
            result.outcome, result.reason = stop.outcome, stop.reason
            result.detail = f"{stop.detail}; {result.detail}" if result.detail else stop.detail
            result.frame_index, result.frame_spans, result.frames, result.pixel_digest = [], [], 0, None
            result.frame_digests = []
            result.metadata = None  # described the transcoded instance, which was not written
            result.bytes_out = 0
            if stop.outcome is Outcome.KEPT:
                result.metadata = copy.metadata if metadata else None
                if copy_kept:
                    _keep_copy(src_path, dst_path, result, durable, copy)
        except OSError as exc:
            result.outcome, result.reason = Outcome.FAILED, Reason.WRITE_ERROR
            result.detail = f"{exc.strerror or exc}: {exc.filename or dst_path}"
        except Exception as exc:  # one bad instance must never stop a migration
            result.outcome, result.reason = Outcome.FAILED, Reason.INTERNAL_ERROR
            result.detail = f"{type(exc).__name__}: {exc}"
    result.seconds["total"] = time.perf_counter() - started
    return result


def _keep_copy(src: Path, dst: Path, result: TranscodeResult, durable: bool, copy: _Copy) -> None:
    try:
        result.output_digest = copy_atomically(src, dst, durable=durable, prefix=copy.prefix, start=copy.start)
    except OSError as exc:
        result.detail = f"to be kept as is ({result.reason}), but the copy failed: {exc.strerror or exc}"
        result.outcome, result.reason = Outcome.FAILED, Reason.WRITE_ERROR
        return
    result.destination = str(dst)
    result.bytes_out = dst.stat().st_size
