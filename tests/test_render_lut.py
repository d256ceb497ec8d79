"""The lookup-table path of grey-scale rendering gives the same pixels as
the per-pixel float pipeline it replaces, on real files: signed CT with a
rescale, Modality and VOI LUT Sequences (corpus), 8, 16 and 32 bits, big
endian; and inverted, as MONOCHROME1. And rendering from the header's
group 0028 alone (what the server caches) gives the same pixels as from
the whole header, grey and colour."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from tests.conftest import corpus_files, pydicom_files
from transcode.codecs.decode import register_plugins
from transcode.server import render


def _grey_files() -> list[pydicom.Dataset]:
    register_plugins()
    out = []
    for path in pydicom_files() + corpus_files():
        try:
            ds = pydicom.dcmread(path)
            if ds.get("PhotometricInterpretation") in ("MONOCHROME1", "MONOCHROME2") and "PixelData" in ds:
                frame = ds.pixel_array
                out.append((path.name, ds, frame if frame.ndim == 2 else frame[0]))
        except (InvalidDicomError, ValueError, NotImplementedError, RuntimeError, AttributeError, KeyError, TypeError,
                StopIteration):  # pydicom's decoder, on an offset table that does not point at the fragments
            pass  # files pydicom cannot decode here are not what this test is about
    return out


GREY = _grey_files()


@pytest.mark.parametrize("window", [None, render.Window(40, 400), render.Window(500, 2000, "SIGMOID")])
def test_lut_path_equals_per_pixel_path(window) -> None:
    names = {name for name, _, _ in GREY}
    assert "CT_small.dcm" in names  # signed, with a rescale
    if corpus_files():  # the team corpus: a Modality LUT Sequence, a VOI LUT Sequence
        assert {"mlut_18.dcm", "vlut_04.dcm"} <= names
    for name, ds, frame in GREY:
        for photometric in ("MONOCHROME2", "MONOCHROME1"):
            ds.PhotometricInterpretation = photometric
            reference = np.rint(render.grey_levels(frame, ds, window)).astype(np.uint8)
            assert np.array_equal(render.grey_image(frame, ds, window), reference), (name, photometric)


def _rendered_files() -> list[tuple[str, pydicom.Dataset, np.ndarray]]:
    """Every pydicom and corpus file that renders here (grey, palette, RGB,
    YBR): its header read as the server reads it, and its first frame."""
    out = []
    for path in pydicom_files() + corpus_files():
        try:
            ds = pydicom.dcmread(path)
            frames = ds.pixel_array
            samples = int(ds.get("SamplesPerPixel", 1))
            frame = frames[0] if frames.ndim == (4 if samples > 1 else 3) else frames
            render.to_rgb_or_grey(frame, ds, None)
        except (InvalidDicomError, ValueError, NotImplementedError, RuntimeError, AttributeError, KeyError, TypeError,
                IndexError, StopIteration):
            continue  # files pydicom cannot decode or render here are not what this test is about
        out.append((path.name, pydicom.dcmread(path, stop_before_pixels=True), frame))
    return out


def test_the_image_header_renders_as_the_whole_header_does() -> None:
    """The server renders from the header's group 0028 only (`Service.image_header`,
    cached for many instances): the same pixels as from the whole header."""
    files = _rendered_files()
    names = {name for name, _, _ in files}
    # pydicom's own (the corpus adds more): signed with a rescale; palette; RGB; YBR_FULL_422
    assert {"CT_small.dcm", "examples_palette.dcm", "SC_rgb_gdcm_KY.dcm", "examples_ybr_color.dcm"} <= names
    for name, header, frame in files:
        image = header.group_dataset(0x0028)
        for window in (None, render.Window(40, 400)):
            assert np.array_equal(render.to_rgb_or_grey(frame, image, window),
                                  render.to_rgb_or_grey(frame, header, window)), (name, window)
