"""WADO-URI (`?requestType=WADO&studyUID=...`): rewritten into the WADO-RS
and rendered requests it stands for, with PS3.18's defaults and refusals."""

from __future__ import annotations

import io
from urllib.parse import urlencode

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.served import Served
from transcode.archive import FolderArchive
from transcode.server import create_app

LE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def client(served: Served):
    with FolderArchive(served.root) as archive:
        yield TestClient(create_app(archive))


def wado_uri(uids: tuple[str, str, str], root: str = "/wado", **query: str) -> str:
    study, series, sop = uids
    return f"{root}?" + urlencode({"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop,
                                   **query})


def rs(uids: tuple[str, str, str]) -> str:
    return "/dicomweb/studies/{}/series/{}/instances/{}".format(*uids)


def test_an_instance_is_explicit_vr_little_endian_by_default(client, served) -> None:
    """PS3.18 9.4.2.4: without transferSyntax, Explicit VR Little Endian
    (a viewer of RIS links has no HTJ2K decoder); `*` sends what is stored."""
    mr = served.find("MR")  # 5 frames, stored as HTJ2K
    for root in ("/wado", "/dicomweb"):  # OHIF's wadoUriRoot is the DICOMweb root
        r = client.get(wado_uri(mr, root, contentType="application/dicom"))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/dicom"
        ds = pydicom.dcmread(io.BytesIO(r.content))
        assert ds.file_meta.TransferSyntaxUID == LE
        np.testing.assert_array_equal(ds.pixel_array, served.source(mr[2]).pixel_array)
    stored = client.get(rs(mr), headers={"Accept": "application/dicom; transfer-syntax=*"}).content
    assert client.get(wado_uri(mr, contentType="application/dicom", transferSyntax="*")).content == stored
    as_named = wado_uri(mr, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.202")
    assert client.get(as_named).content == stored


def test_the_default_content_type_follows_the_object(client, served) -> None:
    """PS3.18 7.1.2 and 7.2.2: a single-frame image (or one frame named) is
    image/jpeg, a multi-frame object application/dicom."""
    ct, mr = served.find("CT"), served.find("MR")
    assert client.get(wado_uri(ct)).headers["content-type"] == "image/jpeg"
    assert client.get(wado_uri(mr)).headers["content-type"] == "application/dicom"
    r = client.get(wado_uri(mr, frameNumber="2"))
    assert r.headers["content-type"] == "image/jpeg"
    same = client.get(rs(mr) + "/frames/2/rendered", headers={"Accept": "image/jpeg"})
    assert r.content == same.content


def test_rendering_parameters_are_those_of_the_rendered_route(client, served) -> None:
    ct = served.find("CT")  # 128 columns x 96 rows
    r = client.get(wado_uri(ct, contentType="image/png", rows="48", windowCenter="40", windowWidth="400"))
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)  # fitted, aspect kept
    same = client.get(rs(ct) + "/frames/1/rendered?viewport=128,48&window=40,400,linear",
                      headers={"Accept": "image/png"})
    assert r.content == same.content

    # region: fractions of the frame, here its centre quarter (32..96 x 24..72), at full size
    r = client.get(wado_uri(ct, contentType="image/png", region="0.25,0.25,0.75,0.75"))
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)
    same = client.get(rs(ct) + "/frames/1/rendered?viewport=64,48,32,24,64,48", headers={"Accept": "image/png"})
    assert r.content == same.content
    quality = client.get(wado_uri(ct, contentType="image/jpeg", imageQuality="20")).content
    assert quality == client.get(rs(ct) + "/frames/1/rendered?quality=20", headers={"Accept": "image/jpeg"}).content


@pytest.mark.parametrize(("query", "status", "reason"), [
    ({"requestType": "WADO-RS"}, 400, "bad_wado_uri"),
    ({"objectUID": None}, 400, "bad_wado_uri"),
    ({"anonymize": "yes"}, 400, "not_supported"),
    ({"annotation": "patient"}, 400, "not_supported"),
    ({"objectUID": "1.2.3.4.5"}, 404, "not_found"),
    ({"objectUID": "../../etc"}, 400, None),
    ({"contentType": "video/mpeg"}, 406, "not_acceptable"),
    ({"contentType": "image/png", "windowCenter": "40"}, 400, "bad_wado_uri"),
    ({"contentType": "image/png", "region": "0.5,0.5,0.4,0.9"}, 400, "bad_wado_uri"),
    ({"contentType": "image/png", "frameNumber": "0"}, 400, "bad_wado_uri"),
    ({"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.4.50"}, 406, "not_acceptable"),
    ({"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.1, */*"}, 400, "invalid_uid"),
])
def test_what_cannot_be_answered_is_refused_with_a_reason(client, served, query, status, reason) -> None:
    study, series, sop = served.find("CT")
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop, **query}
    r = client.get("/wado?" + urlencode({k: v for k, v in params.items() if v is not None}))
    assert r.status_code == status, r.text
    if reason:
        assert r.json()["error"] == reason


def test_other_requests_at_the_root_pass_through(client) -> None:
    assert client.get("/dicomweb/studies").status_code == 200
    assert client.get("/wado").status_code == 404  # no query: not a WADO-URI request
