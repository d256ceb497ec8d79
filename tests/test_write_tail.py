"""The elements after Pixel Data (Data Set Trailing Padding, say): kept, and
read from Pixel Data on."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from transcode import Outcome, transcode_file
from transcode.dicom import write
from transcode.dicom.read import open_instance


def test_the_tail_is_read_from_pixel_data_on(monkeypatch) -> None:
    """Not walked to from the start of the data set: a per-file cost."""
    starts = []
    real = write.explicit_le

    def recording(fp, start, *args, **kwargs):
        starts.append(start)
        return real(fp, start, *args, **kwargs)

    monkeypatch.setattr(write, "explicit_le", recording)
    with open_instance(get_testdata_file("CT_small.dcm")) as instance:  # it ends with Trailing Padding
        assert instance.raw[0x7FE00010].value is not None  # read, not deferred: the offset serves all the same
        pixel_data = instance.raw[0x7FE00010]
        tail = write.data_set_tail(instance)
    assert starts == [pixel_data.value_tell - 12]
    assert tail[:4] == b"\xfc\xff\xfc\xff"


def test_elements_after_pixel_data_are_kept(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0xFFFCFFFC, "OB", b"\x01\x02\x03\x04")  # Data Set Trailing Padding
    ds.save_as(tmp_path / "src.dcm")
    result = transcode_file(tmp_path / "src.dcm", tmp_path / "out.dcm")
    assert result.outcome is Outcome.TRANSCODED
    assert pydicom.dcmread(tmp_path / "out.dcm")[0xFFFCFFFC].value == b"\x01\x02\x03\x04"
