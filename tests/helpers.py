"""Assertions shared by the tests: identity of everything but the pixels,
bit-exact pixels through independent decoders, the .202 profile."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from transcode.codecs import codestream, htj2k
from transcode.codecs.codestream import CodestreamIndex
from transcode.dicom.read import open_instance

ENCAPSULATION = {0x7FE00001, 0x7FE00002, 0x7FE00003, 0x7FE00010}
META_MAY_CHANGE = {"TransferSyntaxUID", "ImplementationClassUID", "ImplementationVersionName",
                   "FileMetaInformationGroupLength"}


def sha256(path: Path) -> str:
    """An independent check of file identity (not the pipeline's own digest)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path, force=True)


def assert_only_allowed_changes(src: Path, out: Path) -> None:
    """Element by element: only the changes DESIGN.md allows."""
    a, b = read(src), read(out)
    assert b.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.202"
    for elem in a.file_meta:
        if elem.keyword not in META_MAY_CHANGE:
            assert b.file_meta[elem.tag].value == elem.value, elem.keyword
    # Group lengths (gggg,0000) are retired encoding data that pydicom omits.
    kept = lambda ds: {t for t in ds.keys() if t not in ENCAPSULATION and t.element != 0}  # noqa: E731
    assert kept(a) == kept(b)
    for tag in kept(a):
        before, after = a[tag], b[tag]
        if before.keyword == "PhotometricInterpretation" and before.value != after.value:
            assert (before.value, after.value) in {("RGB", "YBR_RCT")}, (before.value, after.value)
        elif before.keyword == "PlanarConfiguration" and before.value != after.value:
            assert after.value == 0
        elif isinstance(before.value, bytes) and before.VR in ("OW", "OF", "OL", "OD", "OV") and not a.is_little_endian:
            # pydicom keeps these as the file's bytes: big endian words in the
            # source, little endian in the output (tests/test_byte_faithful.py)
            width = {"OW": 2, "OF": 4, "OL": 4}.get(before.VR, 8)
            swapped = np.frombuffer(before.value, f">u{width}").astype(f"<u{width}").tobytes()
            assert after.value == swapped, f"{before.tag} {before.keyword} changed"
        else:
            assert after.value == before.value, f"{before.tag} {before.keyword} changed"


def assert_pixels_equal(src: Path, out: Path) -> None:
    """pydicom decodes the output (through pylibjpeg-openjpeg, OpenJPEG) to the
    same array as the source (through whatever decodes the source)."""
    expected = read(src).pixel_array
    actual = read(out).pixel_array
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def output_indexes(out: Path) -> list[CodestreamIndex]:
    with open_instance(out) as instance:
        return [codestream.parse(data) for data in instance.codestreams()]


def assert_profile_202(index: CodestreamIndex) -> None:
    """PS3.5 A.4.6: HT, reversible, RPCL, TLM, lowest level <= 64 pixels, and
    our own rule: resolution-major so every level boundary is a prefix."""
    assert index.high_throughput and index.reversible and index.has_tlm
    assert index.progression == "RPCL"
    assert index.decompositions == htj2k.decompositions_for(index.width, index.height)
    assert max(index.resolution_size(0)) <= 64
    assert index.decompositions == 1 or max(index.resolution_size(1)) > 64
    assert index.resolution_major
