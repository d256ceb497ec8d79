"""The lookup-table path of grey-scale rendering gives the same pixels as
the per-pixel float pipeline it replaces, on real files: signed CT with a
rescale, Modality and VOI LUT Sequences (corpus), 8, 16 and 32 bits, big
endian; and inverted, as MONOCHROME1."""

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
        except (InvalidDicomError, ValueError, NotImplementedError, RuntimeError, AttributeError, KeyError, TypeError):
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
