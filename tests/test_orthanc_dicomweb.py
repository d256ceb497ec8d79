"""Orthanc 1.10's DICOMweb plugin as a client of `transcode serve`: it
pushes a study with STOW-RS, and pulls it back with WADO-RS. Its client asks
for `transfer-syntax=*`, so it gets the stored objects, byte for byte."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from fixtures.generate import demo_study
from tests.helpers import assert_pixels_equal
from tests.peers import orthanc
from tests.served import serve_command
from transcode.archive import FolderArchive
from transcode.codecs.decode import register_plugins

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def test_orthanc_stores_to_us_and_retrieves_from_us(tmp_path: Path) -> None:
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")
    register_plugins()  # pydicom reads the JPEG Lossless and JPEG-LS sources as the pipeline does
    files = demo_study(tmp_path / "demo")  # CT, MR, CR and US in eight transfer syntaxes
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    root = tmp_path / "archive"
    with serve_command(root) as base:
        config = {"Plugins": [str(DICOMWEB_PLUGIN)],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"transcode": [base + "/"]}}}
        with orthanc(tmp_path / "orthanc", config=config) as peer:
            for path in files:
                peer.post("/instances", path.read_bytes())
            (study,) = peer.get("/studies")
            study_uid = peer.get(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
            request = json.dumps({"Resources": [study]}).encode()
            assert peer.post("/dicom-web/servers/transcode/stow", request, "application/json")["InstancesCount"] == "12"

            with FolderArchive(root, read_only=True) as archive:
                rows = {r.sop_uid: r for r in archive.index.instances()}
            assert set(rows) == set(sources)
            assert Counter((r.outcome, r.reason) for r in rows.values()) == {("transcoded", None): 11,
                                                                            ("kept", "lossy_source"): 1}
            for sop, row in rows.items():
                if row.outcome == "transcoded":
                    assert_pixels_equal(sources[sop], root / row.path)

            peer.delete(f"/studies/{study}")
            request = json.dumps({"Resources": [{"Study": study_uid}]}).encode()
            answer = peer.post("/dicom-web/servers/transcode/retrieve", request, "application/json")
            assert answer["ReceivedInstancesCount"] == "12"
            for instance in peer.get("/instances"):
                sop = peer.get(f"/instances/{instance}/simplified-tags")["SOPInstanceUID"]
                assert peer.read(f"/instances/{instance}/file") == (root / rows[sop].path).read_bytes(), sop
