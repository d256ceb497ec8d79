"""Every instance of pydicom's test files (and the corpus, when present),
ingested and served: each resource answers, or refuses with a reason; no
request ends in an internal error; decoded frames of transcoded instances
are the source's pixels."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import CORPUS, PYDICOM_FILES
from tests.served import multipart_parts
from transcode.archive import FolderArchive
from transcode.pipeline import ingest
from transcode.server import create_app

STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
EXPLICIT_LE = "1.2.840.10008.1.2.1"
AS_EXPLICIT_LE = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'
DECODED = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
# Refusals with a reason: frames of 1-bit images, transfer syntaxes pydicom cannot parse, data nobody decodes.
REASONS = {"one_bit_frames", "unsupported_transfer_syntax", "cannot_decode"}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory):
    sources = [PYDICOM_FILES] + ([CORPUS] if CORPUS.is_dir() else [])
    with FolderArchive(tmp_path_factory.mktemp("corpus") / "archive", exclusive=True) as archive:
        yield archive, ingest(sources, archive, workers=2)


@pytest.fixture(scope="module")
def archive(ingested):
    return ingested[0]


#: Reasons that say the product, not the file, is at fault.
BUGS = {"transcode_error", "internal_error", "worker_crashed"}


def test_no_file_meets_a_bug(ingested) -> None:
    report = ingested[1]
    assert len(report.entries) > 50
    assert [(e.source_path, e.reason, e.detail) for e in report.entries if e.reason in BUGS] == []


def test_every_instance_is_served_or_refused_with_a_reason(archive) -> None:
    client = TestClient(create_app(archive), raise_server_exceptions=False)
    rows = list(archive.index.instances())
    assert len(rows) > 50
    checked = converted_instances = 0
    for row in rows:
        url = f"/dicomweb/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"
        assert client.get(url + "/metadata").status_code == 200, row.path
        r = client.get(url, headers={"Accept": AS_EXPLICIT_LE})
        assert r.status_code == 200 or r.json()["error"] == "not_acceptable", (row.path, r.text)
        if r.status_code == 200:
            (_, payload), = multipart_parts(r.headers["content-type"], r.content)
            converted = pydicom.dcmread(io.BytesIO(payload))
            assert converted.file_meta.TransferSyntaxUID == EXPLICIT_LE and converted.SOPInstanceUID == row.sop_uid
            if row.outcome == "transcoded":  # the stored pixels, decoded
                np.testing.assert_array_equal(converted.pixel_array, pydicom.dcmread(archive.root / row.path).pixel_array)
            converted_instances += 1
        if row.frames == 0:
            continue
        for accept in (STORED, DECODED):
            r = client.get(url + "/frames/1", headers={"Accept": accept})
            assert r.status_code == 200 or r.json()["error"] in REASONS, (row.path, r.text)
        for resource in ("/rendered", "/thumbnail"):
            r = client.get(url + resource, headers={"Accept": "image/png"})
            assert r.status_code == 200 or r.json()["error"] in REASONS, (row.path, resource, r.text)
        if row.outcome != "transcoded":
            continue
        r = client.get(url + "/frames/1", headers={"Accept": DECODED})
        (_, payload), = multipart_parts(r.headers["content-type"], r.content)
        ds = pydicom.dcmread(archive.root / row.path)
        expected = ds.pixel_array if row.frames == 1 else ds.pixel_array[0]
        assert payload == np.ascontiguousarray(expected, expected.dtype.newbyteorder("<")).tobytes(), row.path
        checked += 1
    assert checked > 20 and converted_instances > 50


def test_every_frame_has_an_iiif_service_and_regions(archive) -> None:
    """info.json and a full image for every instance with frames, or a
    refusal with a reason; a region of every transcoded frame, decoded, is
    the stored frame's pixels there."""
    client = TestClient(create_app(archive), raise_server_exceptions=False)
    regions = 0
    for row in archive.index.instances():
        if row.frames == 0:
            continue
        path = f"/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}/frames/1"
        info = client.get("/iiif" + path + "/info.json")
        assert info.status_code == 200, (row.path, info.text)
        image = client.get("/iiif" + path + "/full/max/0/default.png")
        assert image.status_code == 200 or image.json()["error"] in REASONS, (row.path, image.text)
        if image.status_code == 200:
            assert Image.open(io.BytesIO(image.content)).size == (info.json()["width"], info.json()["height"])
        if row.outcome != "transcoded":
            continue
        ds = pydicom.dcmread(archive.root / row.path)
        frame = ds.pixel_array if row.frames == 1 else ds.pixel_array[0]
        h, w = frame.shape[:2]
        box = {"x": w // 4, "y": h // 3, "w": max(1, w // 2), "h": max(1, h // 3)}
        r = client.get("/dicomweb" + path + "/region", params=box, headers={"Accept": "application/octet-stream"})
        assert r.status_code == 200, (row.path, r.text)
        expected = frame[box["y"]:box["y"] + box["h"], box["x"]:box["x"] + box["w"]]
        assert r.content == np.ascontiguousarray(expected, expected.dtype.newbyteorder("<")).tobytes(), row.path
        regions += 1
    assert regions > 20
