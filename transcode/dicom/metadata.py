"""DICOM JSON (PS3.18 F.2) of an instance as stored, for the archive index.

Pixel Data and the encapsulation elements are left out; other values above
1 KiB become BulkDataURIs relative to the instance ("bulkdata/GGGGEEEE"),
which the server resolves.

pydicom converts each element (raw bytes to value to JSON) at about 14 µs
an element: 3.5 ms for a 250-element CT header, more than the codec needs
for its 512x512 pixels. Most of a header repeats from one instance of a
series to the next, so each process remembers the JSON of the raw elements
it has converted (`_remembered`), value and serialised text, and converts
only what changed.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

log = logging.getLogger(__name__)

PIXEL_AND_ENCAPSULATION = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009, 0x7FE00001, 0x7FE00002, 0x7FE00003})
BULK_DATA_THRESHOLD = 1024
SPECIFIC_CHARACTER_SET = 0x00080005
#: Raw elements whose JSON is remembered: those up to this size (larger
#: ones are bulk data), at most this many, then start afresh. A few MB
#: (about 2 MB for 8192 typical elements; 4 KB each at worst).
_REMEMBER_BYTES = BULK_DATA_THRESHOLD
_REMEMBER_COUNT = 8192
_remembered: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}


@dataclass(frozen=True, slots=True)
class DicomJson:
    """An instance's DICOM JSON: each element's JSON value, by tag
    ("GGGGEEEE", ascending), and its compact serialised text. The index
    stores text; joining the elements' texts costs a fifth of serialising
    the whole again (0.2 ms for a 250-element header)."""

    elements: dict[str, dict[str, Any]]
    texts: dict[str, str]

    def text(self, tags: Iterable[str] | None = None) -> str:
        """The JSON text of every element, or of those of `tags` present
        (in that order)."""
        chosen = self.texts if tags is None else [tag for tag in tags if tag in self.texts]
        return "{" + ",".join(f'"{tag}":{self.texts[tag]}' for tag in chosen) + "}"

    def first(self, tag: str) -> Any:
        """The element's first value, or None."""
        values = self.elements.get(tag, {}).get("Value") or [None]
        return values[0]


def _bulk_data_uri(element: DataElement | RawDataElement) -> str:
    return f"bulkdata/{element.tag:08X}"


def _to_json(element: DataElement) -> tuple[dict[str, Any], str]:
    """The JSON of a value set by us (`dicom_json`'s `changes`)."""
    value = element.to_json_dict(bulk_data_element_handler=_bulk_data_uri, bulk_data_threshold=BULK_DATA_THRESHOLD)
    return value, json.dumps(value, separators=(",", ":"))


_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _element_json(ds: Dataset, tag: BaseTag, raw: Any = None) -> dict[str, Any]:
    """The JSON of `ds`'s element `tag`, as pydicom writes it, but for what
    pydicom cannot write as DICOM JSON:

    - a sequence is written item by item, so that an element inside that
      does not convert is described alone;
    - Person Names with an empty value among several (pydicom 3.0 raises
      IndexError): that value is null (PS3.18 F.2.5);
    - any other value that does not convert (a DS of "166.3õ0003", a VR
      code that is no VR) is UN with the bytes received (`_as_received`),
      from `raw`, the element as parsed (by default as `ds` holds it now,
      before converting replaces it). The stored object carries the
      element unchanged either way.
    """
    raw = ds.get_item(tag, keep_deferred=True) if raw is None else raw
    try:
        element = ds[tag]
    except Exception as exc:  # noqa: BLE001 (pydicom's conversions, on values they do not expect: any error)
        return _as_received(tag, raw, exc)
    if element.VR == "SQ":
        items = [{f"{inner:08X}": _element_json(item, inner) for inner in item.keys()}  # noqa: SIM118 (tags)
                 for item in element.value]
        return {"vr": "SQ", "Value": items}  # as pydicom writes it, an empty sequence too
    try:
        return element.to_json_dict(bulk_data_element_handler=_bulk_data_uri, bulk_data_threshold=BULK_DATA_THRESHOLD)
    except IndexError as exc:
        if element.VR != "PN" or not isinstance(element.value, MultiValue):
            return _as_received(tag, raw, exc)
        return {"vr": "PN", "Value": [dict(zip(_NAME_GROUPS, name.components, strict=False)) or None
                                      for name in element.value]}
    except Exception as exc:  # noqa: BLE001 (as above)
        return _as_received(tag, raw, exc)


def _as_received(tag: BaseTag, raw: Any, exc: Exception) -> dict[str, Any]:
    """The JSON of the raw element `raw`, which pydicom could not write
    (`exc`), as UN with its value bytes as received: the one JSON form that
    holds any value (PS3.18 F.2.7). Raises ValueError where those bytes are
    not at hand (an element converted before, without its raw form)."""
    if not isinstance(raw, RawDataElement) or (raw.value is None and 0 < raw.length <= BULK_DATA_THRESHOLD):
        raise ValueError(f"{tag}: pydicom cannot write it as DICOM JSON ({exc}), and its bytes are not at hand")
    log.warning("%s does not convert to DICOM JSON (%s: %s): described as UN, with its bytes", tag,
                type(exc).__name__, exc)
    if raw.length > BULK_DATA_THRESHOLD:
        return {"vr": "UN", "BulkDataURI": _bulk_data_uri(raw)}
    return {"vr": "UN", "InlineBinary": base64.b64encode(raw.value).decode("ascii")} if raw.length else {"vr": "UN"}


def _key(raw: Any, elements: Mapping[BaseTag, Any], charset: Any) -> tuple[Any, ...] | None:
    """What the JSON of the raw element `raw` depends on, or None where that
    is more than its own bytes: deferred or large values, and implicit VR
    elements whose VR pydicom infers from other elements (ambiguous VRs,
    sequences, private elements without their creator)."""
    if not isinstance(raw, RawDataElement) or raw.value is None or len(raw.value) > _REMEMBER_BYTES:
        return None
    key = (int(raw.tag), raw.VR, raw.value, raw.is_little_endian, charset)  # int: BaseTag compares in Python
    if raw.VR:
        return key
    tag = BaseTag(raw.tag)
    if tag.is_private:
        creator = elements.get(tag.private_creator) if tag.element >= 0x1000 else None
        if tag.element >= 0x1000 and not isinstance(creator, RawDataElement):
            return None
        return (*key, creator.value if creator else None)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return None if " or " in vr or vr == "SQ" else key


def dicom_json(
    ds: Dataset, changes: dict[str, Any] | None = None, raw: Mapping[BaseTag, Any] | None = None
) -> DicomJson:
    """The JSON model of `ds` with `changes` (keyword -> value) applied.

    `raw` holds the elements as parsed, before anything converted them (see
    `dicom.read.Instance.raw`): those are looked up in what this process
    converted before. The returned element values may be shared with later
    calls: treat them as read-only.
    """
    elements = raw if raw is not None else dict(ds.items())
    charset_element = elements.get(SPECIFIC_CHARACTER_SET)
    charset = charset_element.value if isinstance(charset_element, RawDataElement) else ds.get("SpecificCharacterSet")
    if not isinstance(charset, str | bytes | None):  # several character sets: a MultiValue
        charset = tuple(charset)
    new = {Tag(tag_for_keyword(keyword)): value for keyword, value in (changes or {}).items()}
    values: dict[str, dict[str, Any]] = {}
    texts: dict[str, str] = {}
    # Sorted and tested as plain ints: BaseTag compares in Python, which
    # cost a quarter of the time here.
    for tag in sorted({*ds.keys(), *new}, key=int):
        if tag in PIXEL_AND_ENCAPSULATION or not tag & 0xFFFF:  # group lengths are retired
            continue
        if tag in new:
            converted = _to_json(DataElement(tag, dictionary_VR(tag), new[tag]))
        else:
            key = _key(elements.get(tag), elements, charset)
            converted = _remembered.get(key) if key is not None else None
            if converted is None:
                value = _element_json(ds, tag, elements.get(tag))
                converted = value, json.dumps(value, separators=(",", ":"))
                if key is not None:
                    if len(_remembered) >= _REMEMBER_COUNT:
                        _remembered.clear()
                    _remembered[key] = converted
        name = f"{tag:08X}"
        values[name], texts[name] = converted
    return DicomJson(values, texts)
