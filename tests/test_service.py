"""The ingest service behind the doors: its write session across calls."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from fixtures.generate import Spec, write
from tests.conftest import PYDICOM_FILES, corpus_files, pydicom_files
from transcode.archive import FolderArchive
from transcode.archive.check import verify_archive
from transcode.archive.store import ArchiveBusy
from transcode.dicom.read import read_strings
from transcode.service import IngestService, Sent, identify


def test_the_write_session_is_held_between_calls_then_released(tmp_path: Path) -> None:
    """Instance after instance reuses one write session; another writer is
    refused while it is held and gets in once the service has been idle
    for `hold` seconds; every instance is archived and verifiable."""
    src = tmp_path / "src"
    src.mkdir()
    files = [src / f"{n}.dcm" for n in range(3)]
    for n, path in enumerate(files):
        write(Spec("CT", 64, 64, seed=n), path)
    root = tmp_path / "archive"
    service = IngestService(root, workers=1, hold=1.0)
    try:
        assert [e.outcome for e in service.store(files[:1])] == ["transcoded"]
        assert [e.outcome for e in service.store(files[1:2])] == ["transcoded"]
        with pytest.raises(ArchiveBusy):
            FolderArchive(root, exclusive=True)
        deadline = time.monotonic() + 30
        while True:  # released once idle for `hold` seconds
            try:
                with FolderArchive(root, exclusive=True):
                    break
            except ArchiveBusy:
                assert time.monotonic() < deadline, "the write session was never released"
                time.sleep(0.2)
        assert [e.outcome for e in service.store(files[2:])] == ["transcoded"]  # a new session
    finally:
        service.close()
    with FolderArchive(root, read_only=True) as archive:
        assert verify_archive(archive) == []
        assert archive.index.listed() == (3, 0)


def test_a_second_service_waits_for_the_first_ones_idle_session(tmp_path: Path) -> None:
    """Two services over one archive, as two server nodes: the second's call
    waits (up to `busy_wait`) while the first holds its idle session, then
    gets in; with no wait it is refused at once."""
    files = []
    for n in range(2):
        files.append(write(Spec("CT", 64, 64, seed=n), tmp_path / f"{n}.dcm"))
    root = tmp_path / "archive"
    first, impatient, patient = (IngestService(root, workers=1, hold=hold, busy_wait=busy_wait)
                                 for hold, busy_wait in ((1.0, 0.0), (1.0, 0.0), (1.0, 30.0)))
    try:
        assert [e.outcome for e in first.store(files[:1])] == ["transcoded"]  # holds its session for 1 s
        with pytest.raises(ArchiveBusy):
            impatient.store(files[1:])
        began = time.monotonic()
        assert [e.outcome for e in patient.store(files[1:])] == ["transcoded"]
        assert time.monotonic() - began < 30
    finally:
        for service in (first, impatient, patient):
            service.close()
    with FolderArchive(root, read_only=True) as archive:
        assert archive.index.listed() == (2, 0)


def _as_pydicom_reads(path: Path) -> Sent | None:
    """The four UIDs as pydicom reads them from the whole header (None where it cannot)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return Sent(*(str(ds.get(keyword, "")) or None
                      for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")))
    except Exception:  # noqa: BLE001 (a file pydicom cannot read is not compared)
        return None


def test_identify_reads_what_pydicom_reads_from_every_test_file(tmp_path: Path) -> None:
    """`identify` reads the UIDs with the structure walk where it can
    (a receiver identifies every instance it is sent): the same values as
    pydicom's parse, for every file pydicom ships (implicit, explicit and
    big endian, deflated, without File Meta, truncated) and every corpus
    file, and for a file cut inside its header, which the walk refuses and
    pydicom reads."""
    compared = walked = 0
    cut = tmp_path / "cut.dcm"
    cut.write_bytes((PYDICOM_FILES / "CT_small.dcm").read_bytes()[:1500])
    for path in [*pydicom_files(), *corpus_files(), cut]:
        expected = _as_pydicom_reads(path)
        if expected is None or expected.sop is None:
            continue
        assert identify(path) == expected, path.name
        compared += 1
        walked += read_strings(path, [0x00080018]) is not None
    assert compared >= 60 and walked >= 50, (compared, walked)
    assert read_strings(cut, [0x00080018]) is None  # cut inside an element: pydicom's reading was used
