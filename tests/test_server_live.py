"""The server over a real uvicorn on loopback, driven by dicomweb-client (a
DICOMweb client written by others): search, metadata, instances, frames,
and STOW-RS."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
import requests
import uvicorn
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from fixtures.generate import Spec, write
from tests.served import Served
from transcode.archive import FolderArchive
from transcode.limits import Limits
from transcode.server import create_app


def serve(archive: FolderArchive, limits: Limits | None = None, **config: Any):  # -> Iterator[str]
    """The app over `archive` under uvicorn on loopback (in a thread), with
    `limits` and further uvicorn `config`; yields its DICOMweb root."""
    app = create_app(archive, limits=limits)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/dicomweb"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def web(served: Served):
    with FolderArchive(served.root) as archive:
        for url in serve(archive):
            yield DICOMwebClient(url)


def test_search_and_metadata(web, served) -> None:
    studies = web.search_for_studies(search_filters={"PatientName": "Other*"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [served.study_b]
    series = web.search_for_series(served.study_a)
    assert sorted(s["00080060"]["Value"][0] for s in series) == ["CT", "MR", "US"]
    study, series_uid, sop = served.find("MR")
    instances = web.search_for_instances(study, series_uid)
    assert [i["00080018"]["Value"][0] for i in instances] == [sop]
    meta = web.retrieve_instance_metadata(study, series_uid, sop)  # the one instance's dict
    assert meta["00280008"]["Value"] == [5]


def test_instance_retrieval_decodes_to_the_source_pixels(web, served) -> None:
    study, series, sop = served.find("MR")
    ds = web.retrieve_instance(study, series, sop)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.202"
    np.testing.assert_array_equal(ds.pixel_array, served.source(sop).pixel_array)
    # A reader without an HTJ2K decoder names Explicit VR Little Endian.
    native = web.retrieve_instance(study, series, sop, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert native.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and native.SOPInstanceUID == sop
    np.testing.assert_array_equal(native.pixel_array, served.source(sop).pixel_array)


def test_frames_as_stored_and_decoded(web, served) -> None:
    study, series, sop = served.find("MR")
    expected = served.source(sop).pixel_array
    # dicomweb-client knows no HTJ2K media type (image/jphc): "as stored" is octet-stream with transfer-syntax *
    stored = web.retrieve_instance_frames(study, series, sop, [2, 4], media_types=(("application/octet-stream", "*"),))
    for data, number in zip(stored, (2, 4), strict=True):
        np.testing.assert_array_equal(imagecodecs.htj2k_decode(data), expected[number - 1])
    raw = web.retrieve_instance_frames(study, series, sop, [5],
                                       media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),))
    assert raw[0] == expected[4].astype("<u2").tobytes()
    # without media types dicomweb-client asks for type="*/*": any part type, so as stored
    (default,) = web.retrieve_instance_frames(study, series, sop, [3])
    np.testing.assert_array_equal(imagecodecs.htj2k_decode(default), expected[2])
    streamed = list(web.iter_instance_frames(study, series, sop, [1, 2, 3, 4, 5],
                                             media_types=(("application/octet-stream", "*"),)))
    assert len(streamed) == 5


def test_stow_runs_the_ingest_pipeline(tmp_path: Path) -> None:
    study = generate_uid()
    good = write(Spec("CT", 64, 64, 1, 16, 12, seed=5), tmp_path / "good.dcm", study=study)
    other = write(Spec("CT", 32, 32, 1, 16, 12, seed=6), tmp_path / "other.dcm")  # another study
    with FolderArchive(tmp_path / "archive") as archive:
        for url in serve(archive):
            web = DICOMwebClient(url)
            response = web.store_instances([pydicom.dcmread(good)])
            (stored,) = response.ReferencedSOPSequence
            assert stored.ReferencedSOPInstanceUID == pydicom.dcmread(good).SOPInstanceUID
            # (dicomweb-client's POST sends "Host: 127.0.0.1" without the port, so only the path is checked)
            assert stored.RetrieveURL.endswith(f"/instances/{stored.ReferencedSOPInstanceUID}")
            assert f"/dicomweb/studies/{study}/series/" in stored.RetrieveURL
            assert "FailedSOPSequence" not in response
            found = web.search_for_instances(study)
            assert [i["00083002"]["Value"][0] for i in found] == ["1.2.840.10008.1.2.4.202"]
            again = web.store_instances([pydicom.dcmread(good)])  # the same instance: a duplicate, referenced
            assert len(again.ReferencedSOPSequence) == 1
            with pytest.raises(requests.HTTPError, match="409"):
                web.store_instances([pydicom.dcmread(other)], study_instance_uid=study)
            np.testing.assert_array_equal(web.retrieve_instance(study, found[0]["0020000E"]["Value"][0],
                                                                found[0]["00080018"]["Value"][0]).pixel_array,
                                          pydicom.dcmread(good).pixel_array)


def test_transcode_serve_command(served, tmp_path) -> None:
    import json
    import socket
    import subprocess
    import sys
    import urllib.request

    from transcode.cli import EXIT_USAGE, main

    not_an_archive = tmp_path / "sources"
    not_an_archive.mkdir()
    (not_an_archive / "image.dcm").write_bytes(b"not to be touched")
    assert main(["serve", "--archive", str(not_an_archive)]) == EXIT_USAGE
    assert [p.name for p in not_an_archive.iterdir()] == ["image.dcm"]

    def studies_served(archive: Path) -> list[dict]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(archive),
                                 "--port", str(port), "--log-level", "warning"], stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert f"http://127.0.0.1:{port}/dicomweb" in line
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/dicomweb/studies") as response:
                        return json.loads(response.read())
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(10)

    studies = studies_served(served.root)
    assert {s["0020000D"]["Value"][0] for s in studies} == {served.study_a, served.study_b}
    # A new folder becomes an empty archive, to be filled through STOW-RS.
    assert studies_served(tmp_path / "new") == [] and (tmp_path / "new" / "index.sqlite").is_file()
