"""Proof that a codestream holds exactly the source frame.

Every frame is decoded again with OpenJPH (the encoder's own library) and
compared array-for-array, dtype and shape included. OpenJPEG, an independent
implementation, decodes the first frame of each instance (or every frame on
request): a codestream that only its writer can read is no migration.
"""

from __future__ import annotations

from enum import StrEnum

import imagecodecs
import numpy as np

from transcode.codecs import htj2k
from transcode.policy import Reason, keep


class CrossCheck(StrEnum):
    """Which frames OpenJPEG decodes too. Coding parameters are the same for
    all frames of an instance, so the first frame proves interoperability;
    `all` doubles the decode work for those who want every frame proved twice."""

    FIRST = "first"
    ALL = "all"
    NONE = "none"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def verify_frame(source: np.ndarray, data: bytes, *, index: int) -> None:
    """Raise `policy.Stop` (kept as is) unless OpenJPH decodes `data` to `source`."""
    try:
        decoded = htj2k.decode(data)
    except Exception as exc:
        raise keep(Reason.VERIFY_MISMATCH, f"frame {index}: OpenJPH cannot decode its own output: {exc}") from exc
    if not _same(decoded, source):
        raise keep(Reason.VERIFY_MISMATCH, f"frame {index}: decoded HTJ2K differs from the source pixels")


def crosscheck_frame(source: np.ndarray, data: bytes, *, index: int) -> None:
    """Raise `policy.Stop` (kept as is) unless OpenJPEG decodes `data` to `source`."""
    try:
        # imagecodecs' OpenJPEG build: the same library pydicom reaches through
        # pylibjpeg-openjpeg, but it releases the GIL, so it runs beside OpenJPH.
        decoded = imagecodecs.jpeg2k_decode(data, numthreads=1)
    except Exception as exc:
        raise keep(Reason.INDEPENDENT_DECODER_MISMATCH, f"frame {index}: OpenJPEG cannot decode the HTJ2K output: {exc}") from exc
    if not _same(decoded, source):
        raise keep(Reason.INDEPENDENT_DECODER_MISMATCH, f"frame {index}: OpenJPEG decodes the HTJ2K output to other pixels")
