"""Sources read by two independent decoders, and which frames are cross-checked.

Damaged JPEG Lossless data decodes without complaint, to pixels that depend
on the decoder: libjpeg-turbo (the pipeline's) and liblj92 disagree. Such a
source must be kept as is, not transcoded into what one decoder read.
"""

from __future__ import annotations

import struct
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from pydicom.uid import JPEGLosslessSV1, RLELossless

from fixtures.generate import Spec, write
from tests.conftest import CORPUS
from tests.helpers import sha256
from transcode import Outcome, transcode_file
from transcode.dicom.read import open_instance
from transcode.policy import Reason
from transcode.verify import CrossCheck, Sampler


def _first_fragment(path: Path) -> tuple[int, int, bytes]:
    """(offset, length) of the first Pixel Data fragment after the Basic
    Offset Table, and the file's bytes."""
    data = path.read_bytes()
    bot = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xe0\x7f\x10\x00"))
    item = bot + 8 + struct.unpack_from("<I", data, bot + 4)[0]
    return item + 8, struct.unpack_from("<I", data, item + 4)[0], data


def _damaged_where_decoders_disagree(src: Path, dst: Path, bits_stored: int) -> Path:
    """`src` with one byte of its first fragment flipped where libjpeg-turbo
    and liblj92 both decode the frame, to different pixels within Bits
    Stored (so that no other check keeps it first). Searched, not
    hard-coded: encoders differ."""
    start, length, data = _first_fragment(src)
    with open_instance(src) as instance:
        frame = next(instance.codestreams())  # the first frame: this fragment and any that follow
    for k in range(length // 4, length - 4):
        damaged = bytearray(frame)
        damaged[k] ^= 0xFF
        try:
            turbo, lj92 = imagecodecs.jpeg8_decode(bytes(damaged)), imagecodecs.ljpeg_decode(bytes(damaged))
        except Exception:
            continue
        if turbo.shape == lj92.shape and not np.array_equal(turbo, lj92) and int(turbo.max()) >> bits_stored == 0:
            out = bytearray(data)
            out[start + k] ^= 0xFF
            dst.write_bytes(out)
            return dst
    pytest.skip("no single flipped byte makes these decoders disagree on this file")


def test_damaged_jpeg_lossless_is_kept_when_decoders_disagree(tmp_path: Path) -> None:
    src = write(Spec("CT", 64, 64, 1, 16, 12, seed=3, transfer_syntax=JPEGLosslessSV1), tmp_path / "src.dcm")
    bad = _damaged_where_decoders_disagree(src, tmp_path / "bad.dcm", 12)
    before = sha256(bad)
    result = transcode_file(bad, tmp_path / "out.dcm", crosscheck="first")
    assert result.outcome is Outcome.KEPT and result.reason is Reason.SOURCE_DECODERS_DISAGREE, result.detail
    assert "liblj92" in result.detail and "differ" in result.detail
    assert sha256(tmp_path / "out.dcm") == before == sha256(bad)  # kept: an exact copy; the source untouched
    # Without the second decoder, the output would be libjpeg-turbo's reading, "verified".
    assert transcode_file(bad, tmp_path / "blind.dcm", crosscheck="none").outcome is Outcome.TRANSCODED
    # The intact source passes both decoders.
    assert transcode_file(src, tmp_path / "good.dcm", crosscheck="all").outcome is Outcome.TRANSCODED


def test_damaged_corpus_jpeg_lossless(tmp_path: Path, corpus: Path) -> None:
    """The corpus' 16-bit signed JPEG Lossless CT, damaged the same way."""
    bad = _damaged_where_decoders_disagree(corpus / "JPEG-LL.dcm", tmp_path / "bad.dcm", 16)
    result = transcode_file(bad, tmp_path / "out.dcm", crosscheck="first")
    assert result.reason is Reason.SOURCE_DECODERS_DISAGREE, result.detail


def test_rle_sources_are_read_by_both_decoders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RLE goes through pylibjpeg-rle and, independently, pydicom's numpy
    decoder. Both are strict PackBits readers: on damaged data they fail
    together or agree (a fuzz of this file found no disagreement), so the
    wiring is shown by an independent reading that differs."""
    src = write(Spec("CT", 64, 64, 2, 16, 12, seed=4, transfer_syntax=RLELossless), tmp_path / "src.dcm")
    assert transcode_file(src, tmp_path / "out.dcm", crosscheck="all").outcome is Outcome.TRANSCODED
    import transcode.verify as verify

    real = verify.decode_independently
    calls: list[str] = []

    def off_by_one(tsyntax: str, codestream: bytes, **options: object) -> np.ndarray:
        calls.append(tsyntax)
        arr = real(tsyntax, codestream, **options)
        arr[0, 0] += 1
        return arr

    monkeypatch.setattr(verify, "decode_independently", off_by_one)
    result = transcode_file(src, tmp_path / "out2.dcm", crosscheck="all", workers=1)
    assert result.reason is Reason.SOURCE_DECODERS_DISAGREE and "pydicom-numpy" in result.detail
    assert calls and set(calls) == {RLELossless}


def test_rle_decoder_panic_is_a_decode_error(tmp_path: Path) -> None:
    """pylibjpeg-rle panics (a Rust BaseException, not an Exception) on some
    damaged segments; that is the file's problem, never the caller's crash."""
    from rle.utils import decode_pixel_data

    src = write(Spec("CT", 64, 64, 1, 16, 12, seed=3, transfer_syntax=RLELossless), tmp_path / "src.dcm")
    start, length, data = _first_fragment(src)
    for offset in range(start + 64, start + length):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        try:
            decode_pixel_data(bytes(damaged[start : start + length]), version=2, rows=64, columns=64, samples_per_pixel=1,
                              bits_allocated=16)
        except Exception:
            continue
        except BaseException:  # the panic
            break
    else:
        pytest.skip("this pylibjpeg-rle does not panic on damaged segments")
    (tmp_path / "bad.dcm").write_bytes(damaged)
    result = transcode_file(tmp_path / "bad.dcm", tmp_path / "out.dcm")
    assert result.outcome is Outcome.KEPT and result.reason is Reason.DECODE_ERROR


def test_sampler_checks_each_format_until_proved_and_one_frame_in_n() -> None:
    sampler = Sampler(every=5)
    mode = CrossCheck.SAMPLE
    assert sampler.due(mode, "ct", 0)  # first of its format
    assert sampler.due(mode, "ct", 0)  # not proved yet (a failed check proves nothing)
    sampler.passed("ct")
    due = [sampler.due(mode, "ct", 0) for _ in range(10)]
    assert due.count(True) == 2  # frames 5 and 10 of this sampler's count
    assert sampler.due(mode, "mr", 1) is False or sampler.due(mode, "mr", 0)
    assert all(sampler.due(CrossCheck.ALL, "ct", i) for i in range(3))
    assert [sampler.due(CrossCheck.FIRST, "ct", i) for i in range(3)] == [True, False, False]
    assert not any(sampler.due(CrossCheck.NONE, "new", i) for i in range(3))


def test_default_crosscheck_is_sample() -> None:
    import inspect

    default = inspect.signature(transcode_file).parameters["crosscheck"].default
    assert CrossCheck(default) is CrossCheck.SAMPLE
    assert CORPUS  # the corpus path is configured (the corpus test skips without the files)
