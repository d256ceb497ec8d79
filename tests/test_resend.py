"""Re-sent instances follow one documented policy (`policy.resend`): a
duplicate is the same pixels and header; another header or other pixels is
a conflict, told apart, stored beside the archived copy or replacing it;
a complete copy replaces an image header archived without pixels. Nothing
is dropped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from fixtures.generate import Spec, write
from transcode.archive import FolderArchive
from transcode.archive.check import verify_archive
from transcode.digest import file_digest
from transcode.pipeline import WorkerPool, ingest
from transcode.policy import OnConflict, Reason, Resend, Version, resend


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    """One worker process for the whole module: each ingest would start its own."""
    workers = WorkerPool(1)
    yield workers
    workers.close()


def _ingest(paths: list[Path], archive_root: Path, pool: WorkerPool, **options: object) -> list[tuple[str, str | None]]:
    with FolderArchive(archive_root, exclusive=True) as archive:
        report = ingest(paths, archive, pool=pool, **options)
    return [(e.outcome, e.reason) for e in report.entries]


def _edited(src: Path, dst: Path, **values: object) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(dst)
    return dst


def _row(archive_root: Path, sop: str):  # -> InstanceRow
    with FolderArchive(archive_root) as archive:
        return archive.index.instance(sop)


@pytest.fixture
def original(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "a.dcm"
    path.parent.mkdir()
    return write(Spec("CT", 32, 32, seed=1), path)


def test_a_corrected_header_is_a_conflict_not_a_duplicate(original: Path, tmp_path: Path, pool: WorkerPool) -> None:
    """Class 5 of the issue: the same pixels with a corrected Patient Name
    were reported `duplicate` and thrown away."""
    archive = tmp_path / "archive"
    corrected = _edited(original, tmp_path / "corrected.dcm", PatientName="Corrected^Name")
    assert _ingest([original], archive, pool) == [("transcoded", None)]
    assert _ingest([corrected], archive, pool) == [("conflict", "header_changed")]
    sop = pydicom.dcmread(original).SOPInstanceUID
    row = _row(archive, sop)
    assert json.loads(row.dicom_json)["00100010"]["Value"][0]["Alphabetic"] != "Corrected^Name"  # the first stays
    with FolderArchive(archive) as opened:
        (aside,) = opened.index.db.execute("SELECT path FROM conflicts WHERE sop_uid = ?", (sop,)).fetchone()
        assert pydicom.dcmread(opened.layout.resolve(aside)).PatientName == "Corrected^Name"  # kept for review
        assert verify_archive(opened) == []


def test_same_content_is_a_duplicate_and_other_pixels_a_distinct_conflict(
        original: Path, tmp_path: Path, pool: WorkerPool) -> None:
    archive = tmp_path / "archive"
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(original.read_bytes())
    ds = pydicom.dcmread(original)
    other_pixels = _edited(original, tmp_path / "other.dcm", PixelData=bytes(len(ds.PixelData)))
    assert _ingest([original, copy, other_pixels], archive, pool) == [
        ("transcoded", None), ("duplicate", None), ("conflict", "pixels_changed")]


def test_replace_keeps_the_previous_copy(original: Path, tmp_path: Path, pool: WorkerPool) -> None:
    archive = tmp_path / "archive"
    corrected = _edited(original, tmp_path / "corrected.dcm", PatientName="Corrected^Name")
    _ingest([original], archive, pool)
    sop = pydicom.dcmread(original).SOPInstanceUID
    before = _row(archive, sop)
    assert _ingest([corrected], archive, pool, on_conflict="replace") == [("replaced", "header_changed")]
    after = _row(archive, sop)
    assert json.loads(after.dicom_json)["00100010"]["Value"][0]["Alphabetic"] == "Corrected^Name"
    assert (after.path, after.outcome, after.reason) == (before.path, "transcoded", None)
    assert after.object_digest != before.object_digest
    with FolderArchive(archive) as opened:
        assert file_digest(opened.layout.resolve(after.path)) == after.object_digest
        (aside,) = opened.index.db.execute("SELECT path FROM conflicts WHERE sop_uid = ?", (sop,)).fetchone()
        assert file_digest(opened.layout.resolve(aside)) == before.object_digest  # the previous version
        assert verify_archive(opened) == []


def _header_only(src: Path, dst: Path) -> Path:
    """`src` cut right before its Pixel Data: a whole file, an image header without pixels."""
    data = src.read_bytes()
    dst.write_bytes(data[: data.index(b"\xe0\x7f\x10\x00")])
    return dst


def test_a_complete_copy_replaces_an_image_header_archived_without_pixels(
        original: Path, tmp_path: Path, pool: WorkerPool) -> None:
    """Class 4 of the issue: the stub stayed the instance and the intact file
    was set aside. Now the intact one becomes the instance (default policy);
    the stub is kept beside it."""
    archive = tmp_path / "archive"
    stub = _header_only(original, tmp_path / "stub.dcm")
    assert _ingest([stub], archive, pool) == [("kept", "no_pixel_data")]
    sop = pydicom.dcmread(original).SOPInstanceUID
    assert _row(archive, sop).frames == 0  # nothing to serve as a frame
    assert _ingest([original], archive, pool) == [("replaced", "no_pixel_data")]
    row = _row(archive, sop)
    assert (row.outcome, row.frames) == ("transcoded", 1)
    with FolderArchive(archive) as opened:
        assert len(opened.index.frames(sop)) == 1
        assert verify_archive(opened) == []
    # The other way round, the stub never replaces the complete copy, even when asked to.
    archive = tmp_path / "archive2"
    _ingest([original], archive, pool)
    assert _ingest([stub], archive, pool, on_conflict="replace") == [("conflict", "conflict")]
    assert _row(archive, sop).outcome == "transcoded"


def _version(digest: str, pixels: str | None, header: str = '{"00100010":{"vr":"PN"}}',
             reason: str | None = None) -> Version:
    return Version.of(digest, pixels, header, reason)


def test_the_policy_in_one_table() -> None:
    archived = _version("o1", "p1")
    keep, replace = OnConflict.KEEP, OnConflict.REPLACE
    assert resend(archived, _version("o1", "p1"), keep).action is Resend.DUPLICATE
    assert resend(archived, _version("o2", "p1"), keep).action is Resend.DUPLICATE  # same pixels, same header
    other_header = _version("o2", "p1", '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"X"}]}}')
    assert (resend(archived, other_header, keep).action, resend(archived, other_header, keep).reason) == (
        Resend.CONFLICT, Reason.HEADER_CHANGED)
    assert resend(archived, other_header, replace).action is Resend.REPLACE
    assert resend(archived, _version("o2", "p2"), keep).reason is Reason.PIXELS_CHANGED
    assert resend(_version("o1", None), _version("o2", None), keep).reason is Reason.CONFLICT  # kept: not compared
    # Bulk data is not in the JSON: only a byte-identical object is a duplicate then.
    bulk = '{"60003000":{"vr":"OW","BulkDataURI":"bulkdata/60003000"}}'
    assert resend(_version("o1", "p1", bulk), _version("o2", "p1", bulk), keep).reason is Reason.HEADER_CHANGED
    stub = _version("o0", None, '{"00280010":{"vr":"US","Value":[32]}}', "no_pixel_data")
    assert stub.incomplete and resend(stub, archived, keep).action is Resend.REPLACE
    assert resend(archived, stub, replace).action is Resend.CONFLICT


BOUNDARY = "resend"


def _stow(client, *payloads: bytes):  # -> httpx.Response
    parts = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                     for p in payloads)
    return client.post("/dicomweb/studies", content=parts + f"--{BOUNDARY}--\r\n".encode(),
                       headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})


@pytest.mark.parametrize(("on_conflict", "status", "name"), [("keep", 409, "Original^Name"),
                                                             ("replace", 200, "Corrected^Name")])
def test_stow_follows_the_same_policy(on_conflict: str, status: int, name: str, original: Path,
                                      tmp_path: Path) -> None:
    """The server's setting (`transcode serve --on-conflict`) decides, as for
    ingest: keep answers 0111 for the corrected copy (stored aside); replace
    stores it as the instance."""
    from fastapi.testclient import TestClient

    from transcode.server import create_app

    first = _edited(original, tmp_path / "first.dcm", PatientName="Original^Name").read_bytes()
    corrected = _edited(original, tmp_path / "corrected.dcm", PatientName="Corrected^Name").read_bytes()
    with FolderArchive(tmp_path / "archive") as archive:
        client = TestClient(create_app(archive, stow_workers=1, on_conflict=on_conflict))
        assert _stow(client, first).status_code == 200
        r = _stow(client, corrected)
        assert r.status_code == status, r.text
        if status == 409:
            assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0111]
        ds = pydicom.dcmread(original)
        meta = client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                          f"/instances/{ds.SOPInstanceUID}/metadata").json()
        assert meta[0]["00100010"]["Value"][0]["Alphabetic"] == name
        assert archive.index.counts()["conflicts"] == 1  # the other copy, kept beside


def test_cli_on_conflict(original: Path, tmp_path: Path) -> None:
    """`transcode ingest --on-conflict`: keep (the default) exits 1 on a
    conflict, for a person to look; replace exits 0."""
    from transcode.cli import EXIT_FAILED, EXIT_OK, main

    archive = str(tmp_path / "archive")
    (tmp_path / "fix").mkdir()
    corrected = _edited(original, tmp_path / "fix" / "corrected.dcm", PatientName="Corrected^Name")
    assert main(["ingest", str(original), "--archive", archive, "--workers", "1"]) == EXIT_OK
    assert main(["ingest", str(corrected), "--archive", archive, "--workers", "1"]) == EXIT_FAILED
    again = _edited(original, tmp_path / "fix" / "again.dcm", PatientName="Again^Corrected")
    assert main(["ingest", str(again), "--archive", archive, "--workers", "1", "--on-conflict", "replace"]) == EXIT_OK
    assert json.loads(_row(Path(archive), pydicom.dcmread(original).SOPInstanceUID).dicom_json)[
        "00100010"]["Value"][0]["Alphabetic"] == "Again^Corrected"
