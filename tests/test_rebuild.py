"""`transcode verify --rebuild-index`: the index rebuilt from the stored
objects has the rows ingest wrote; what objects do not hold (the ledger)
is kept from a readable old index."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from fixtures.generate import Spec, write
from tests.conftest import PYDICOM_FILES
from tests.served import Served
from tests.test_ingest import make_study
from tests.test_server_stow import CONTENT_TYPE, body
from transcode.archive import ArchiveBusy, FolderArchive
from transcode.archive.identity import read_marker
from transcode.archive.rebuild import rebuild_index
from transcode.cli import EXIT_FAILED, EXIT_OK, main
from transcode.pipeline import ingest
from transcode.server import create_app

CATALOG = ("studies", "series", "instances", "frames")


def rows(root: Path, tables: tuple[str, ...] = CATALOG) -> dict[str, list[tuple]]:
    with closing(sqlite3.connect(root / "index.sqlite")) as db:
        return {table: sorted(db.execute(f"SELECT * FROM {table}")) for table in tables}


def test_an_emptied_index_is_rebuilt_with_the_same_rows_and_served_again(
        served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = Path(shutil.copytree(served.root, tmp_path / "archive"))
    before = rows(archive)
    (archive / "index.sqlite").write_bytes(b"")

    assert main(["verify", "--archive", str(archive), "--rebuild-index"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"7 instances, {len(before['frames'])} frames, 0 conflicting copies, 0 problem(s)." in out
    assert "the ledger of ingested source files starts empty" in out
    assert rows(archive) == before
    assert main(["verify", "--archive", str(archive)]) == EXIT_OK

    with FolderArchive(archive) as opened:
        client = TestClient(create_app(opened, stow_workers=1))
        assert len(client.get("/dicomweb/studies").json()) == 2
        study, series, sop = served.find("MR")
        r = client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/5",
                       headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
        assert r.status_code == 200
        new = write(Spec("CT", 32, 32, 1, 16, 12, seed=7), tmp_path / "new.dcm", study=served.study_a)
        r = client.post("/dicomweb/studies", content=body(new.read_bytes()), headers={"Content-Type": CONTENT_TYPE})
        assert r.status_code == 200, r.text


def test_a_readable_index_keeps_its_ledger_and_conflicts(tmp_path: Path) -> None:
    make_study(tmp_path / "src")
    # The conflicting content sent twice: one file in conflicts/, two rows.
    shutil.copy(tmp_path / "src" / "zz" / "conflict.dcm", tmp_path / "src" / "zz" / "conflict_again.dcm")
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        ingest([tmp_path / "src"], archive, workers=1)
    everything = (*CATALOG, "conflicts", "ledger")
    before = rows(tmp_path / "archive", everything)
    marker = read_marker(tmp_path / "archive" / "archive.json")

    rebuilt = rebuild_index(tmp_path / "archive")
    assert (rebuilt.instances, rebuilt.frames, rebuilt.conflicts, rebuilt.ledger) == (6, 9, 1, 11)
    assert len(before["conflicts"]) == 2
    assert rows(tmp_path / "archive", everything) == before
    assert marker is not None and rebuilt.identity == marker.next()
    assert read_marker(tmp_path / "archive" / "archive.json") == rebuilt.identity
    assert not list((tmp_path / "archive").glob("index.sqlite?*"))  # no temporary index, no WAL left


def test_real_files_kept_reasons_decided_again(tmp_path: Path) -> None:
    """pydicom's files: transcoded (RLE, 2-frame RGB), kept as lossy, and
    a 32-bit dose kept because OpenJPEG cannot read it back (its row was that
    of the transcoded instance never written, before the fix)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 "rtdose.dcm"):
        shutil.copy(PYDICOM_FILES / name, src / name)
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([src], archive, workers=1)
    assert sorted(e.outcome for e in report.entries) == ["kept", "kept", "transcoded", "transcoded", "transcoded"]
    before = rows(tmp_path / "archive")
    (tmp_path / "archive" / "index.sqlite").unlink()

    rebuilt = rebuild_index(tmp_path / "archive")
    assert not rebuilt.ledger_kept and not rebuilt.problems
    assert rows(tmp_path / "archive") == before
    assert sorted((row[5], row[6] or "") for row in before["instances"]) == [
        ("kept", "independent_decoder_mismatch"), ("kept", "lossy_source"), *[("transcoded", "")] * 3]
    # The ledger is gone: the same sources are read again, and found already archived.
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        again = ingest([src], archive, workers=1)
    assert again.skipped == 0 and again.counts() == {"duplicate": 5}


def test_kept_objects_pydicom_cannot_read_whole_are_indexed_again(tmp_path: Path) -> None:
    """Ingest archives them (an IS of "1A" in Number of Frames; sequences
    400 deep, which pydicom cannot parse), but the rebuild read them with
    pydicom alone and left them out as problems ("invalid literal for
    int()", a RecursionError)."""
    from tests.test_bad_input import _before, _ct, _sequence

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PYDICOM_FILES / "badVR.dcm", src / "badVR.dcm")
    (src / "deep.dcm").write_bytes(_before(_ct(), b"\x09\x00\x10\x00LO", _sequence(400, b"")))
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([src], archive, workers=1)
    assert sorted((e.outcome, e.reason) for e in report.entries) == [("kept", "bad_pixel_data"),
                                                                     ("kept", "reader_error")]
    before = rows(tmp_path / "archive")
    (tmp_path / "archive" / "index.sqlite").unlink()

    rebuilt = rebuild_index(tmp_path / "archive")
    assert rebuilt.problems == []
    after = rows(tmp_path / "archive")
    assert sorted(row[0] for row in after["instances"]) == sorted(row[0] for row in before["instances"])


def test_an_unreadable_object_is_reported_and_left_alone(served: Served, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    archive = Path(shutil.copytree(served.root, tmp_path / "archive"))
    stray = archive / "objects" / served.study_a / generate_uid() / f"{generate_uid()}.dcm"
    stray.parent.mkdir()
    stray.write_bytes(b"\0" * 128 + b"DICM" + b"cut short")
    assert main(["verify", "--archive", str(archive), "--rebuild-index"]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert f"{stray.relative_to(archive)}: not indexed:" in out and "7 instances" in out
    assert stray.exists()


def test_the_rebuild_waits_for_readers_to_let_go(served: Served, tmp_path: Path) -> None:
    archive = Path(shutil.copytree(served.root, tmp_path / "archive"))
    before = (archive / "index.sqlite").read_bytes()
    reader = sqlite3.connect(archive / "index.sqlite")  # a running server, say
    reader.execute("SELECT COUNT(*) FROM instances").fetchone()
    with pytest.raises(ArchiveBusy, match="stop `transcode serve`"):
        rebuild_index(archive)
    reader.close()
    assert (archive / "index.sqlite").read_bytes() == before
    assert not (archive / "index.sqlite.rebuild").exists()
    with FolderArchive(archive, exclusive=True):  # the lock was let go
        pass


def test_a_damaged_frame_is_reported_not_indexed(served: Served, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    archive = Path(shutil.copytree(served.root, tmp_path / "archive"))
    sop = served.find("CT")[2]
    with FolderArchive(archive, read_only=True) as opened:
        (frame,) = opened.index.frames(sop)
        path = opened.layout.resolve(opened.index.instance(sop).path)
    data = bytearray(path.read_bytes())
    last = frame.offset + frame.codestream["tile_parts"][-1][2]  # inside the last tile-part's packets
    data[last + 20:last + 60] = bytes(b ^ 0xFF for b in data[last + 20:last + 60])
    path.write_bytes(data)
    assert main(["verify", "--archive", str(archive), "--rebuild-index"]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert f"{path.relative_to(archive)}: not indexed: Stop: decode_error: frame 0 cannot be decoded" in out
    assert "6 instances" in out and path.exists()


def test_a_readable_index_keeps_its_migration_states(tmp_path: Path) -> None:
    """What a migration from a PACS recorded describes the PACS, not the
    objects: without it, a migration after a rebuild would retrieve every
    study again."""
    make_study(tmp_path / "src")
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        ingest([tmp_path / "src"], archive, workers=1)
        archive.index.set_migration("PACS", generate_uid(), "done", expected=6, received=6, archived=6)
    before = rows(tmp_path / "archive", ("migration",))
    rebuilt = rebuild_index(tmp_path / "archive")
    assert rebuilt.migrations == 1
    assert rows(tmp_path / "archive", ("migration",)) == before
