"""STOW-RS in process: the store response for mixed bodies, bad requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from fixtures.generate import Spec, write
from transcode.archive import FolderArchive
from transcode.archive.objects import StoreArchive
from transcode.server import create_app
from transcode.server.multipart import save_parts
from transcode.stores import MemoryStore

BOUNDARY = "sent-by-a-test"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def body(*payloads: bytes) -> bytes:
    parts = [f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in payloads]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture(params=["folder", "store"])
def client(tmp_path: Path, request: pytest.FixtureRequest):
    """STOW-RS into a folder archive, and into a store archive (objects in
    memory, index and upload spool in a catalog folder)."""
    opened = FolderArchive(tmp_path / "archive") if request.param == "folder" else \
        StoreArchive(MemoryStore(), tmp_path / "catalog", name="memory")
    with opened as archive, TestClient(create_app(archive, stow_workers=1)) as client:
        yield client


def test_mixed_body_gets_202_with_referenced_and_failed(client, tmp_path) -> None:
    study = generate_uid()
    good = write(Spec("MR", 32, 32, 2, 16, 12, seed=1), tmp_path / "good.dcm", study=study).read_bytes()
    lossy = write(Spec("US", 16, 16, 1, 8, 8, samples=3, photometric="YBR_FULL_422",
                       transfer_syntax=JPEGBaseline8Bit), tmp_path / "lossy.dcm", study=study).read_bytes()
    r = client.post("/dicomweb/studies", content=body(good, lossy, b"not DICOM at all"),
                    headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert len(answer["00081199"]["Value"]) == 2  # transcoded, and kept as is
    (failed,) = answer["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    instances = client.get(f"/dicomweb/studies/{study}/instances").json()
    assert sorted(i["00083002"]["Value"][0] for i in instances) == ["1.2.840.10008.1.2.4.202",
                                                                    "1.2.840.10008.1.2.4.50"]


def test_conflicting_copy_is_reported_failed(client, tmp_path) -> None:
    path = write(Spec("CT", 16, 16, 1, 16, 12, seed=1), tmp_path / "a.dcm")
    first = path.read_bytes()
    ds = pydicom.dcmread(path)
    ds.PixelData = bytes([ds.PixelData[0] ^ 1]) + ds.PixelData[1:]  # same SOP Instance UID, other pixels
    ds.save_as(tmp_path / "b.dcm")
    assert client.post("/dicomweb/studies", content=body(first), headers={"Content-Type": CONTENT_TYPE}).status_code == 200
    r = client.post("/dicomweb/studies", content=body((tmp_path / "b.dcm").read_bytes()),
                    headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0111]


def test_a_preamble_before_the_first_boundary_is_ignored(client, tmp_path) -> None:
    """RFC 2046 5.1.1: readers ignore what precedes the first boundary line
    (MIME libraries write "This is a multi-part message..."). It was 400."""
    path = write(Spec("CT", 16, 16, 1, 16, 12, seed=3), tmp_path / "a.dcm")
    preamble = f"This is a multi-part message in MIME format; not --{BOUNDARY} at a line's start.\r\n".encode()
    r = client.post("/dicomweb/studies", content=preamble + body(path.read_bytes()),
                    headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 200, r.text
    assert r.json()["00081199"]["Value"][0]["00081155"]["Value"] == [pydicom.dcmread(path).SOPInstanceUID]


def test_a_truncated_part_with_a_uid_of_no_vr_is_refused_not_a_500(client, tmp_path) -> None:
    """A part the structure walk cannot read (cut inside its pixels) is
    identified by pydicom, whose reading of a SOP Class UID with a VR code
    that is no VR raised NotImplementedError: the whole request was a 500."""
    path = write(Spec("CT", 16, 16, 1, 16, 12, seed=4), tmp_path / "a.dcm")
    data = path.read_bytes()
    assert data.count(b"\x08\x00\x16\x00UI") == 1
    cut = data.replace(b"\x08\x00\x16\x00UI", b"\x08\x00\x16\x00Um")[:-100]
    r = client.post("/dicomweb/studies", content=body(cut), headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 409, r.text
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [pydicom.dcmread(path).SOPInstanceUID]  # identified all the same
    assert "Value" not in failed["00081150"]  # the SOP Class UID could not be read


@pytest.mark.parametrize("size", [1, 5, 17, 1 << 20])
def test_parts_are_read_however_the_body_is_cut(size: int, tmp_path: Path) -> None:
    """The preamble, the boundary and the parts split across chunks at any point."""
    payloads = [bytes(range(256)) * 3, b"second"]
    sent = b"preamble\r\n" + body(*payloads)

    async def chunks():
        for at in range(0, len(sent), size):
            yield sent[at:at + size]

    files = asyncio.run(save_parts(chunks(), CONTENT_TYPE, tmp_path))
    assert [f.read_bytes() for f in files] == payloads


@pytest.mark.parametrize(("content_type", "payload", "status"), [
    ("application/dicom", b"x", 415),
    ('multipart/related; type="application/dicom+json"; boundary=b', b"x", 415),
    ('multipart/related; type="application/dicom"', b"x", 400),
    (CONTENT_TYPE, b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\ntrunc", 400),
])
def test_bad_stow_requests(client, content_type, payload, status) -> None:
    r = client.post("/dicomweb/studies", content=payload, headers={"Content-Type": content_type})
    assert r.status_code == status and r.json()["detail"]
