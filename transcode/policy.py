"""Outcomes and reasons: how every instance ends, in stable machine codes.

An instance ends as exactly one of transcoded (verified), kept as is (with a
reason) or failed (with a reason). The codes below are part of the public
interface: reports, ledgers and exit codes are built on them, so a code is
never renamed, only added.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from transcode.codecs.uncompressed_plugin import ENCAPSULATED_UNCOMPRESSED


class Outcome(StrEnum):
    TRANSCODED = "transcoded"
    KEPT = "kept"
    FAILED = "failed"


class Reason(StrEnum):
    """Why an instance was kept as is or failed. Values are the stable codes."""

    # kept as is: a readable instance we must not or cannot transcode losslessly
    LOSSY_SOURCE = "lossy_source"
    FLOAT_PIXELS = "float_pixels"
    ONE_BIT_PIXELS = "one_bit_pixels"
    BITS_ABOVE_HIGH_BIT = "bits_above_high_bit"
    CHROMA_SUBSAMPLED = "chroma_subsampled"
    UNSUPPORTED_PIXEL_FORMAT = "unsupported_pixel_format"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    NO_PIXEL_DATA = "no_pixel_data"
    INDEPENDENT_DECODER_MISMATCH = "independent_decoder_mismatch"
    VERIFY_MISMATCH = "verify_mismatch"
    ENCODER_ERROR = "encoder_error"
    #: the data set is not well-formed in its transfer syntax, so no copy of
    #: it could carry every element's bytes unchanged
    MALFORMED_DATA_SET = "malformed_data_set"
    #: the pixels, or the Image Pixel module describing them, are malformed
    BAD_PIXEL_DATA = "bad_pixel_data"
    DECODE_ERROR = "decode_error"
    #: pydicom cannot parse a data set whose structure reads whole
    READER_ERROR = "reader_error"
    #: an unexpected error once the instance's identity was read (a bug)
    TRANSCODE_ERROR = "transcode_error"
    FRAME_TOO_LARGE = "frame_too_large"
    SOURCE_DECODERS_DISAGREE = "source_decoders_disagree"
    # failed: nothing that can be an archived instance, or the output could not be written
    NOT_DICOM = "not_dicom"
    MISSING_FILE_META = "missing_file_meta"
    NO_SOP_INSTANCE_UID = "no_sop_instance_uid"
    UNREADABLE = "unreadable"
    TRUNCATED = "truncated"
    WRITE_ERROR = "write_error"
    INTERNAL_ERROR = "internal_error"
    # ingest only: what became of a file in the archive
    INVALID_UID = "invalid_uid"
    WORKER_CRASHED = "worker_crashed"
    #: an archived SOP Instance UID with other content (kept instances: not known whether pixels differ)
    CONFLICT = "conflict"
    #: an archived SOP Instance UID, the same pixels, another header
    HEADER_CHANGED = "header_changed"
    #: an archived SOP Instance UID with other pixels
    PIXELS_CHANGED = "pixels_changed"


class Stop(Exception):
    """Ends the transcoding of one instance with `outcome` and `reason`.

    Raised by any stage; `transcode_file` turns it into the result. `detail`
    is the human sentence: what was found, in terms a PACS engineer can act on.
    `from_header`: decided from the header before any codec ran, so another
    attempt would decide the same.
    """

    def __init__(self, outcome: Outcome, reason: Reason, detail: str, *, from_header: bool = False) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.outcome = outcome
        self.reason = reason
        self.detail = detail
        self.from_header = from_header


def keep(reason: Reason, detail: str, *, from_header: bool = False) -> Stop:
    return Stop(Outcome.KEPT, reason, detail, from_header=from_header)


def fail(reason: Reason, detail: str) -> Stop:
    return Stop(Outcome.FAILED, reason, detail)


#: Source transfer syntaxes whose pixels are exact and so may be transcoded.
LOSSLESS_SOURCES: frozenset[UID] = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        ENCAPSULATED_UNCOMPRESSED,
        RLELossless,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
    }
)

#: Lossless syntaxes this pipeline does not decode (Deflated Image Frame
#: Compression, JPEG XL Lossless, JPEG 2000 Part 2 Multi-component Lossless
#: Only): kept as unsupported, never called lossy, whether or not pydicom's
#: UID dictionary knows them (pynetdicom adds the first two).
LOSSLESS_UNDECODED: frozenset[UID] = frozenset(
    {UID("1.2.840.10008.1.2.8.1"), UID("1.2.840.10008.1.2.4.110"), JPEG2000MCLossless}
)


#: Rows (0028,0010), as a DICOM JSON key.
ROWS = "00280010"
#: DICOM JSON of a value above the bulk data threshold: the value itself is not in the text.
_BULK = '"BulkDataURI"'


class OnConflict(StrEnum):
    """What a re-sent SOP Instance UID with other content does (`resend`)."""

    #: the archived instance stays; the newcomer is stored beside it, for review
    KEEP = "keep"
    #: the newcomer becomes the instance; the archived one is stored beside it
    REPLACE = "replace"


class Resend(StrEnum):
    DUPLICATE = "duplicate"  # nothing new: not stored twice
    CONFLICT = "conflict"  # stored beside the archived instance, for review
    REPLACE = "replace"  # becomes the instance; the archived one is stored beside it


@dataclass(frozen=True, slots=True)
class Version:
    """What the re-send policy compares of one copy of an instance.

    `header` is the data set's DICOM JSON (Pixel Data left out), as the
    index holds it; `pixel_digest` the digest of the decoded pixels, known
    for transcoded copies only; `incomplete` marks a header that describes
    an image while the file holds no pixels (kept as `no_pixel_data`)."""

    object_digest: str
    pixel_digest: str | None
    header: str
    incomplete: bool

    @classmethod
    def of(cls, object_digest: str, pixel_digest: str | None, header: str, reason: str | None) -> Version:
        """The version of a copy kept or transcoded with `reason`: kept as
        `no_pixel_data` while its data set has Rows, it is incomplete."""
        incomplete = reason == Reason.NO_PIXEL_DATA and ROWS in json.loads(header)  # top level: not an icon's
        return cls(object_digest, pixel_digest, header, incomplete)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Resend
    #: what differs (None for a duplicate)
    reason: Reason | None
    detail: str


def resend(archived: Version, newcomer: Version, on_conflict: OnConflict) -> Decision:
    """Decide what becomes of `newcomer`, a copy of an instance whose SOP
    Instance UID the archive holds as `archived`. The one rule for ingest,
    STOW-RS and any later door:

    - a duplicate is the same object, or the same pixels with the same
      header; a header whose JSON holds bulk data (values it leaves out)
      is only the same as a byte-identical object;
    - a complete copy replaces an incomplete one (an image header without
      pixels), whatever `on_conflict` says;
    - any other difference is a conflict, told apart as `header_changed`
      (same pixels), `pixels_changed`, or `conflict` (pixels not compared:
      a copy kept as is); with `OnConflict.REPLACE` the newcomer replaces
      the archived copy, unless it is itself incomplete. Either way both
      copies stay in the archive: nothing is dropped.
    """
    if newcomer.object_digest == archived.object_digest:
        return Decision(Resend.DUPLICATE, None, "the same object is archived already")
    if archived.incomplete and not newcomer.incomplete:
        return Decision(Resend.REPLACE, Reason.NO_PIXEL_DATA,
                        "the archived copy is an image header without pixels; this complete copy replaces it")
    same_pixels = newcomer.pixel_digest is not None and newcomer.pixel_digest == archived.pixel_digest
    if same_pixels and newcomer.header == archived.header and _BULK not in newcomer.header:
        return Decision(Resend.DUPLICATE, None, "the same pixels and header are archived already")
    if same_pixels:
        reason, what = Reason.HEADER_CHANGED, "the same pixels as the archived copy, another header"
    elif newcomer.pixel_digest is not None and archived.pixel_digest is not None:
        reason, what = Reason.PIXELS_CHANGED, "other pixels than the archived copy"
    else:
        reason, what = Reason.CONFLICT, "other content than the archived copy (a copy kept as is: pixels not compared)"
    if newcomer.incomplete:
        what = "an image header without pixels, for an instance archived with other content"
    if on_conflict is OnConflict.REPLACE and not newcomer.incomplete:
        return Decision(Resend.REPLACE, reason, f"{what}: replaces it (--on-conflict replace)")
    return Decision(Resend.CONFLICT, reason, what)
