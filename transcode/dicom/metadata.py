"""DICOM JSON (PS3.18 F.2) of an instance as stored, for the archive index.

Pixel Data and the encapsulation elements are left out; other values above
1 KiB become BulkDataURIs relative to the instance ("bulkdata/GGGGEEEE"),
which the server resolves.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

PIXEL_AND_ENCAPSULATION = (0x7FE00010, 0x7FE00008, 0x7FE00009, 0x7FE00001, 0x7FE00002, 0x7FE00003)


def dicom_json(ds: Dataset, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON model of `ds` with `changes` (keyword -> value) applied."""
    out = Dataset()
    for tag in ds.keys():
        if tag not in PIXEL_AND_ENCAPSULATION and tag.element != 0:
            out[tag] = ds[tag]
    for keyword, value in (changes or {}).items():
        out.add_new(keyword, dictionary_VR(keyword), value)
    return out.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: f"bulkdata/{e.tag:08X}")
