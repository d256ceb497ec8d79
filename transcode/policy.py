"""Outcomes and reasons: how every instance ends, in stable machine codes.

An instance ends as exactly one of transcoded (verified), kept as is (with a
reason) or failed (with a reason). The codes below are part of the public
interface: reports, ledgers and exit codes are built on them, so a code is
never renamed, only added.
"""

from __future__ import annotations

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
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)


class Outcome(StrEnum):
    TRANSCODED = "transcoded"
    KEPT = "kept"
    FAILED = "failed"


class Reason(StrEnum):
    """Why an instance was kept as is or failed. Values are the stable codes."""

    # kept as is: valid input we must not or cannot transcode losslessly
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
    FRAME_TOO_LARGE = "frame_too_large"
    SOURCE_DECODERS_DISAGREE = "source_decoders_disagree"
    # failed: the input is broken or the output could not be written
    NOT_DICOM = "not_dicom"
    MISSING_FILE_META = "missing_file_meta"
    NO_SOP_INSTANCE_UID = "no_sop_instance_uid"
    UNREADABLE = "unreadable"
    BAD_PIXEL_DATA = "bad_pixel_data"
    DECODE_ERROR = "decode_error"
    WRITE_ERROR = "write_error"
    INTERNAL_ERROR = "internal_error"
    # ingest only: what became of a file in the archive
    INVALID_UID = "invalid_uid"
    WORKER_CRASHED = "worker_crashed"
    CONFLICT = "conflict"


class Stop(Exception):
    """Ends the transcoding of one instance with `outcome` and `reason`.

    Raised by any stage; `transcode_file` turns it into the result. `detail`
    is the human sentence: what was found, in terms a PACS engineer can act on.
    """

    def __init__(self, outcome: Outcome, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.outcome = outcome
        self.reason = reason
        self.detail = detail


def keep(reason: Reason, detail: str) -> Stop:
    return Stop(Outcome.KEPT, reason, detail)


def fail(reason: Reason, detail: str) -> Stop:
    return Stop(Outcome.FAILED, reason, detail)


#: Source transfer syntaxes whose pixels are exact and so may be transcoded.
LOSSLESS_SOURCES: frozenset[UID] = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
    }
)
