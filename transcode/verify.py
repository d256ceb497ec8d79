"""Proof that a codestream holds exactly the source frame, and that the
source frame was read right.

Every frame is decoded again with OpenJPH (the encoder's own library) and
compared array-for-array, dtype and shape included. OpenJPEG, an independent
implementation, decodes some frames too (`CrossCheck`): a codestream that
only its writer can read is no migration. Sources with a second decoder at
hand (JPEG Lossless, RLE: see codecs/decode.py) are decoded by it as well,
for the same frames: equal outputs of OpenJPH and the source's decoder
prove only that the output equals what that decoder read.
"""

from __future__ import annotations

import itertools
import threading
from enum import StrEnum
from typing import Hashable

import imagecodecs
import numpy as np

from transcode.codecs import htj2k
from transcode.codecs.decode import decode_independently, independent_name
from transcode.policy import Reason, keep

#: Under `sample`, one frame in this many (counted per process) is also
#: cross-checked, beside the first of each pixel format.
SAMPLE_EVERY = 50


class CrossCheck(StrEnum):
    """Which frames the independent decoders read too.

    `sample` (the default): the first frame of the first instance of each
    format in the process (source transfer syntax, container bits, sign,
    samples, colour transform, tiling, decompositions), again until one
    passes, plus one frame in `SAMPLE_EVERY`. Coding parameters follow from
    the format, so this proves OpenJPEG reads every kind of codestream the
    run writes, for a few per cent of the decode work; a source decoder's
    misreading is caught if it shows in the sample. `first`: the first frame
    of every instance. `all`: every frame (benchmarks/source_crosscheck.py
    measures what that costs on JPEG Lossless and RLE sources). `none`:
    OpenJPH verification alone."""

    SAMPLE = "sample"
    FIRST = "first"
    ALL = "all"
    NONE = "none"


class Sampler:
    """Which frames a process cross-checks under `CrossCheck.SAMPLE`.

    Process state, like the frame pool: the formats whose cross-check passed
    and a frame counter. Thread-safe."""

    def __init__(self, every: int = SAMPLE_EVERY) -> None:
        self.every = every
        self._proved: set[Hashable] = set()
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def due(self, mode: CrossCheck, fmt: Hashable, index: int) -> bool:
        """Whether frame `index` of an instance of format `fmt` is cross-checked."""
        if mode is CrossCheck.ALL:
            return True
        if mode is CrossCheck.FIRST:
            return index == 0
        if mode is CrossCheck.NONE:
            return False
        sampled = next(self._count) % self.every == 0
        with self._lock:
            return sampled or (index == 0 and fmt not in self._proved)

    def passed(self, fmt: Hashable) -> None:
        """Record that a frame of format `fmt` passed its cross-check."""
        with self._lock:
            self._proved.add(fmt)


SAMPLER = Sampler()


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


def crosscheck_source(
    source: np.ndarray, codestream: bytes, tsyntax: str, options: dict[str, object], *, index: int
) -> None:
    """Raise `policy.Stop` (kept as is) unless the independent decoder of
    `tsyntax` decodes the source `codestream` to `source`, the frame the
    primary decoder read. `options`: pydicom's pixel options of the frame."""
    name = independent_name(tsyntax)
    try:
        decoded = decode_independently(tsyntax, codestream, **options)
    except Exception as exc:
        raise keep(Reason.SOURCE_DECODERS_DISAGREE,
                   f"frame {index}: the source decoder read it, {name} cannot: {exc}") from exc
    if not _same(decoded, source):
        differ = int(np.count_nonzero(decoded != source)) if decoded.shape == source.shape else decoded.size
        raise keep(Reason.SOURCE_DECODERS_DISAGREE,
                   f"frame {index}: {name} decodes the source to other pixels ({differ:,} differ): "
                   "the source is damaged or one decoder is wrong")
