"""Ingest into an archive: outcomes, index contents, resumability, verify."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from fixtures.generate import Spec, write
from tests.conftest import PYDICOM_FILES, ROOT
from transcode import pipeline
from transcode.archive import FolderArchive
from transcode.archive.check import verify_archive
from transcode.cli import EXIT_FAILED, EXIT_OK, main
from transcode.codecs import htj2k
from transcode.digest import Digest
from transcode.entries import Entry
from transcode.pipeline import WorkerPool, ingest


def make_study(root: Path) -> dict[str, str]:
    """Three series in mixed syntaxes, a lossy instance, broken files, a
    duplicate and a conflicting duplicate. Returns file name -> expected outcome."""
    study = generate_uid()
    expected = {}
    series = {
        "ct": [Spec("CT", 96, 80, 1, 16, 12, signed=True, transfer_syntax=ts, seed=i)
               for i, ts in enumerate([ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, ExplicitVRBigEndian])],
        "mr": [Spec("MR", 64, 64, 5, 16, 12, seed=10)],
        "us": [Spec("US", 48, 64, 1, 8, 8, samples=3, photometric="YBR_FULL_422",
                    transfer_syntax=JPEGBaseline8Bit, seed=20)],
    }
    for name, specs in series.items():
        series_uid = generate_uid()
        for n, spec in enumerate(specs):
            path = root / name / f"{n}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            write(spec, path, study=study, series=series_uid, number=str(n + 1))
            expected[f"{name}/{n}.dcm"] = "kept" if spec.transfer_syntax == JPEGBaseline8Bit else "transcoded"
    # Files are settled in discovery order (sorted walk): ct/0.dcm comes first.
    (root / "zz").mkdir()
    shutil.copy(root / "ct/0.dcm", root / "zz/duplicate.dcm")
    expected["zz/duplicate.dcm"] = "duplicate"
    conflict = pydicom.dcmread(root / "ct/0.dcm")
    conflict.PixelData = bytes(len(conflict.PixelData))  # same SOP Instance UID, other pixels
    conflict.save_as(root / "zz/conflict.dcm")
    expected["zz/conflict.dcm"] = "conflict"
    (root / "notes.txt").write_text("not DICOM")
    expected["notes.txt"] = "failed"
    data = (root / "mr/0.dcm").read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 2])
    expected["truncated.dcm"] = "failed"
    return expected


def test_ingest_outcomes_index_and_verify(tmp_path: Path) -> None:
    expected = make_study(tmp_path / "src")
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([tmp_path / "src"], archive, workers=2)
        outcomes = {str(Path(e.source_path).relative_to(tmp_path / "src")): e.outcome for e in report.entries}
        assert outcomes == expected
        assert not report.clean  # failures and a conflict

        counts = archive.index.counts()
        assert counts["studies"] == 1 and counts["series"] == 3
        assert counts["instances"] == 6 and counts["conflicts"] == 1 and counts["ledger"] == len(expected)
        assert counts["frames"] == 4 + 5  # transcoded instances only

        for row in archive.index.instances():
            meta = json.loads(row.dicom_json)
            assert meta["00080018"]["Value"] == [row.sop_uid] and "7FE00010" not in meta
            assert archive.read(row.path, 128, 132) == b"DICM"
            if row.outcome == "transcoded":
                digest = Digest()
                for frame in archive.index.frames(row.sop_uid):
                    data = archive.read(row.path, frame.offset, frame.offset + frame.length)
                    assert data[:2] == b"\xff\x4f" and data.endswith(b"\xff\xd9")
                    digest.update(htj2k.decode(data).data)
                assert digest.hexdigest() == row.pixel_digest
        assert verify_archive(archive) == []

        # Running it again does no transcoding work; only failed files are tried again.
        again = ingest([tmp_path / "src"], archive, workers=2)
        assert {Path(e.source_path).name: e.outcome for e in again.entries} == {
            "notes.txt": "failed", "truncated.dcm": "failed"}
        assert again.skipped == len(expected) - 2
        assert archive.index.counts()["instances"] == 6


def test_verify_finds_changed_missing_and_stray_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for n in range(3):
        write(Spec("CT", 64, 64, 2, seed=n), src / f"{n}.dcm")
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        ingest([src], archive, workers=1)
        rows = list(archive.index.instances())
        changed = archive.layout.resolve(rows[0].path)
        data = bytearray(changed.read_bytes())
        data[-100] ^= 0xFF
        changed.write_bytes(data)
        archive.layout.resolve(rows[1].path).unlink()
        (archive.layout.objects / "stray.dcm").write_bytes(b"x")
        problems = {p.path: p.what for p in verify_archive(archive)}
    assert "digest" in problems[rows[0].path]
    assert "missing" in problems[rows[1].path]
    assert "not in the index" in problems["objects/stray.dcm"]
    assert main(["verify", "--archive", str(tmp_path / "archive")]) == EXIT_FAILED


def test_dicomdir_stands_for_the_files_it_lists(tmp_path: Path) -> None:
    shutil.copytree(PYDICOM_FILES / "dicomdirtests", tmp_path / "media")
    listed = list(FileSet(pydicom.dcmread(tmp_path / "media" / "DICOMDIR")))
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([tmp_path / "media" / "DICOMDIR"], archive, workers=2)
    assert len(report.entries) == len(listed)
    assert all(e.outcome in ("transcoded", "kept") for e in report.entries), report.counts()


def test_a_dicomdir_under_another_name_says_what_it_is(tmp_path: Path) -> None:
    shutil.copy(PYDICOM_FILES / "dicomdirtests" / "DICOMDIR", tmp_path / "index.dcm")
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        (entry,) = ingest([tmp_path / "index.dcm"], archive).entries
    assert (entry.outcome, entry.reason) == ("failed", "no_sop_instance_uid")
    assert entry.detail.startswith("a DICOMDIR (Media Storage Directory)")


def test_an_archive_inside_the_source_folder_is_not_ingested(tmp_path: Path) -> None:
    write(Spec("CT", 32, 32), tmp_path / "a.dcm")
    for _ in range(2):
        with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
            ingest([tmp_path], archive, workers=1)
            assert archive.index.counts()["ledger"] == 1


def test_cli_ingest_exit_codes_and_report(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write(Spec("CT", 64, 64), src / "a.dcm")
    archive = tmp_path / "archive"
    report = tmp_path / "report.json"
    assert main(["ingest", str(src), "--archive", str(archive), "--report", str(report), "--workers", "1"]) == EXIT_OK
    assert json.loads(report.read_text())["instances"][0]["outcome"] == "transcoded"
    assert "transcoded" in capsys.readouterr().out
    (src / "bad.dcm").write_bytes(b"nonsense")
    assert main(["ingest", str(src), "--archive", str(archive), "--report", str(report), "--workers", "1"]) == EXIT_FAILED
    written = json.loads(report.read_text())  # this run's files only: a.dcm was done already
    assert [(Path(e["source_path"]).name, e["outcome"]) for e in written["instances"]] == [("bad.dcm", "failed")]
    assert written["counts"] == {"failed": 1} and written["skipped"] == 1
    assert not report.with_name("report.json.partial").exists()
    assert main(["ingest", str(src), "--archive", str(archive), "--report", str(tmp_path / "no" / "r.json")]) == 2
    assert main(["ingest", "/no/such/path", "--archive", str(archive)]) == 2
    assert main(["verify", "--archive", str(archive)]) == EXIT_OK


def test_the_report_written_into_the_source_folder_is_not_ingested(tmp_path: Path) -> None:
    """`--report` inside the folder being ingested: the run found its own
    report.json.partial and failed it as not DICOM (exit 1), and the next run
    would fail the finished report.json the same way."""
    src = tmp_path / "src"
    src.mkdir()
    write(Spec("CT", 64, 64), src / "a.dcm")
    archive, report = tmp_path / "archive", src / "report.json"
    command = ["ingest", str(src), "--archive", str(archive), "--report", str(report), "--workers", "1"]
    assert main(command) == EXIT_OK
    assert [Path(e["source_path"]).name for e in json.loads(report.read_text())["instances"]] == ["a.dcm"]
    assert main(command) == EXIT_OK  # the finished report.json lies in the folder now
    assert json.loads(report.read_text())["instances"] == []
    with FolderArchive(archive, read_only=True) as opened:
        assert opened.index.counts()["ledger"] == 1


def _odd_folder(root: Path) -> Path:
    """A source folder as a legacy export or a shared drive has them: a DICOM
    file whose name is not UTF-8 (Latin-1), a FIFO, a dangling link and a
    link back to the folder itself."""
    root.mkdir()
    write(Spec("CT", 32, 32), root / os.fsdecode(b"Sch\xe4del.dcm"))
    os.mkfifo(root / "pipe.dcm")
    (root / "gone.dcm").symlink_to(root / "nowhere.dcm")
    (root / "loop").symlink_to(root)
    return root


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, printing strictly UTF-8 (as in an
    en_US.UTF-8 terminal), given 120 s: a FIFO opened for reading waits forever."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([sys.executable, "-m", "transcode.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT, check=False)


def test_special_files_and_names_that_are_not_utf8_are_reported(tmp_path: Path) -> None:
    """Before: ingest hung on the FIFO (the source hasher opened it), a name
    that is not UTF-8 stopped the run with a traceback (SQLite refuses lone
    surrogates), and `convert` skipped the FIFO and the dangling link in
    silence, then crashed printing the name."""
    src, archive, report = _odd_folder(tmp_path / "src"), tmp_path / "archive", tmp_path / "report.json"
    done = _cli("ingest", str(src), "--archive", str(archive), "--report", str(report), "--workers", "1")
    assert done.returncode == EXIT_FAILED, done.stderr
    entries = {Path(e["source_path"]).name: e for e in json.loads(report.read_text())["instances"]}
    assert {name: (e["outcome"], e["reason"]) for name, e in entries.items()} == {
        "Sch\\xe4del.dcm": ("transcoded", None), "pipe.dcm": ("failed", "unreadable"),
        "gone.dcm": ("failed", "unreadable")}
    assert entries["pipe.dcm"]["detail"] == "not a regular file: a FIFO"
    again = _cli("ingest", str(src), "--archive", str(archive), "--report", str(report), "--workers", "1")
    assert json.loads(report.read_text())["skipped"] == 1, again.stderr  # the ledger knows the file by that name
    converted = _cli("convert", str(src), str(tmp_path / "out"))
    assert converted.returncode == EXIT_FAILED, converted.stderr
    assert "unreadable: cannot open the file: not a regular file: a FIFO" in converted.stdout
    assert "gone.dcm: unreadable: cannot open the file: No such file or directory" in converted.stdout
    assert "Sch\\xe4del.dcm" in converted.stdout
    assert (tmp_path / "out" / os.fsdecode(b"Sch\xe4del.dcm")).is_file()


def test_an_instance_with_a_large_element_besides_its_pixels_is_transcoded(tmp_path: Path) -> None:
    """pydicom leaves values over 64 kB on disk and reopens the file by its
    name to read one. Files opened through a bare descriptor (to refuse
    FIFOs) had a number for a name, so building the DICOM JSON of such an
    instance (gdcm-US-ALOKA-16's palette, here a private OB) failed it as
    `transcode_error`; `convert`, which builds no JSON, transcoded it."""
    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(write(Spec("US", 32, 32), src / "big.dcm"))
    block = ds.private_block(0x0029, "TRANSCODE TEST", create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * 300)  # 76,800 bytes
    ds.save_as(src / "big.dcm")
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([src], archive, workers=1)
        (entry,) = report.entries
        assert (entry.outcome, entry.reason) == ("transcoded", None), entry.detail
        (row,) = archive.index.instances()
        stored = pydicom.dcmread(archive.root / row.path)
    assert stored[0x00291010].value == bytes(range(256)) * 300


def _patched(path: Path, *changes: tuple[bytes, bytes]) -> None:
    """Replace byte strings, each found once, in the file at `path`."""
    data = path.read_bytes()
    for old, new in changes:
        assert data.count(old) == 1 and len(new) == len(old), old
        data = data.replace(old, new)
    path.write_bytes(data)


def test_values_pydicom_cannot_convert_are_described_by_their_bytes(tmp_path: Path) -> None:
    """A DS holding a stray byte, and an element whose VR code is no VR
    (found by flipping header bytes): pydicom fails writing them as DICOM
    JSON, and the instance was kept as `transcode_error`, indexed by its
    UIDs alone. Its JSON now describes such a value as UN with the bytes
    received (PS3.18 F.2.7), in a sequence too, and the pixels are
    transcoded; the stored object carries the bytes unchanged."""
    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(write(Spec("CT", 16, 16), src / "ct.dcm"))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    ds.TableHeight, ds.ExposureTime = "166.310003", "2000"
    item = pydicom.Dataset()
    item.SliceThickness = "1.50000001"
    ds.ReferencedImageSequence = [item]
    ds.save_as(src / "ct.dcm")
    _patched(src / "ct.dcm", (b"166.310003", b"166.3\xf50003"), (b"\x18\x00\x50\x11IS", b"\x18\x00\x50\x11I\x96"),
             (b"1.50000001", b"1.5\x00000001"))
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        (entry,) = ingest([src], archive, workers=1).entries
        assert (entry.outcome, entry.reason) == ("transcoded", None), entry.detail
        (row,) = archive.index.instances()
        described = json.loads(row.dicom_json)
        stored = pydicom.dcmread(archive.root / row.path)
    assert described["00181130"] == {"vr": "UN", "InlineBinary": base64.b64encode(b"166.3\xf50003").decode()}
    assert described["00181150"] == {"vr": "UN", "InlineBinary": base64.b64encode(b"2000").decode()}
    assert described["00081140"]["Value"][0]["00180050"]["vr"] == "UN"
    assert described["00100020"]["Value"] == [ds.PatientID]  # the rest as pydicom writes it
    assert stored.get_item(0x00181130).value == b"166.3\xf50003"
    assert stored.get_item(0x00181150).value == b"2000"


def test_a_pixel_module_element_with_no_vr_keeps_the_instance(tmp_path: Path) -> None:
    """Bits Allocated with a VR code that is no VR: pydicom raises
    NotImplementedError reading it, and the instance failed as
    `internal_error` (not archived). dcmtk reads the file whole: it is
    kept as received, `bad_pixel_data`."""
    src = tmp_path / "src"
    src.mkdir()
    write(Spec("CT", 16, 16), src / "ct.dcm")
    _patched(src / "ct.dcm", (b"\x28\x00\x00\x01US", b"\x28\x00\x00\x01U\xe7"))
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        (entry,) = ingest([src], archive, workers=1).entries
        assert (entry.outcome, entry.reason) == ("kept", "bad_pixel_data"), entry.detail
        assert "(0028,0100)" in entry.detail
        (row,) = archive.index.instances()
        assert archive.read(row.path) == (src / "ct.dcm").read_bytes()


def test_uids_with_no_vr_end_with_their_reason(tmp_path: Path) -> None:
    """The VR code of the SOP Instance UID, or of the SOP Class UID,
    flipped to one that is no VR: either file failed as `internal_error`,
    as if the product were at fault. Without a readable SOP Instance UID
    there is no identity to keep; the SOP Class UID is the header's
    business, and the pixels are transcoded."""
    src = tmp_path / "src"
    src.mkdir()
    for name, tag in (("instance.dcm", b"\x08\x00\x18\x00"), ("class.dcm", b"\x08\x00\x16\x00")):
        write(Spec("CT", 16, 16), src / name)
        _patched(src / name, (tag + b"UI", tag + b"Um"))
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        entries = {Path(e.source_path).name: e for e in ingest([src], archive, workers=1).entries}
        lost = entries["instance.dcm"]
        assert (lost.outcome, lost.reason) == ("failed", "no_sop_instance_uid"), lost.detail
        assert "cannot be read" in lost.detail and "(0008,0018)" in lost.detail
        kept = entries["class.dcm"]
        assert (kept.outcome, kept.reason) == ("transcoded", None), kept.detail
        (row,) = archive.index.instances()
        assert json.loads(row.dicom_json)["00080016"] == {"vr": "UN", "InlineBinary": base64.b64encode(
            pydicom.dcmread(src / "class.dcm").file_meta.MediaStorageSOPClassUID.encode() + b"\0").decode()}


def _with_uids(path: Path, **uids: str) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in uids.items():
        ds[keyword].value = value
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
    ds.save_as(path)


@pytest.mark.filterwarnings("ignore")  # pydicom warns of the invalid UI values
def test_legacy_uids_with_leading_zeros_are_archived(tmp_path: Path) -> None:
    """Components like "083000" break PS3.5 9.1 but are common in old data
    (GDCM's example XA file has them); they were refused as invalid_uid."""
    src = tmp_path / "src"
    src.mkdir()
    uids = {"StudyInstanceUID": "999.999.2.19940822.083000", "SeriesInstanceUID": "999.999.2.19940822.083000.01",
            "SOPInstanceUID": "999.999.2.19960619.163000.1.0103"}
    _with_uids(write(Spec("CT", 32, 32), src / "legacy.dcm"), **uids)
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        (entry,) = ingest([src], archive).entries
        assert (entry.outcome, entry.reason) == ("transcoded", None)
        study, series, sop = uids.values()
        assert pydicom.dcmread(archive.root / "objects" / study / series / f"{sop}.dcm").SOPInstanceUID == sop
        assert verify_archive(archive) == []


@pytest.mark.filterwarnings("ignore")
def test_hostile_input_never_writes_outside_the_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for n, uids in enumerate([
        {"SOPInstanceUID": "1.2.3/../../../escape"},
        {"StudyInstanceUID": ".."},
        {"SeriesInstanceUID": "/etc"},
        {"SOPInstanceUID": "1." + "2" * 200},
    ]):
        write(Spec("CT", 32, 32, seed=n), src / f"uid{n}.dcm")
        _with_uids(src / f"uid{n}.dcm", **uids)
    # A header that claims 4 GB of pixel data in a small file.
    good = write(Spec("CT", 32, 32), src / "huge.dcm").read_bytes()
    at = good.index(b"\xe0\x7f\x10\x00OW\x00\x00")
    (src / "huge.dcm").write_bytes(good[: at + 8] + struct.pack("<I", 0xFFFFFFF0) + good[at + 12 :])
    os.symlink(src / "nowhere.dcm", src / "broken-link.dcm")
    (src / "loop").mkdir()
    os.symlink(src / "loop", src / "loop" / "again")

    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([src], archive, workers=2)
        entries = {Path(e.source_path).name: (e.outcome, e.reason) for e in report.entries}
    assert {entries[f"uid{n}.dcm"] for n in range(4)} == {("failed", "invalid_uid")}
    assert entries["huge.dcm"] == ("failed", "truncated")  # the file ends 4 GB before its Pixel Data does
    assert entries["broken-link.dcm"] == ("failed", "unreadable")
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and "src" not in p.parts}
    assert all(p.parts[0] == "archive" for p in written)
    assert not any(p.parts[1] == "objects" for p in written)


def crash_on_poison(source: str, *args: object) -> Entry:
    """A worker that dies like a segfaulting codec on files named poison*."""
    if Path(source).name.startswith("poison"):
        os._exit(139)
    from transcode.pipeline import work

    return work(source, *args)


def noting_threads(source: str, staging: str, settings: object, crosscheck: str, threads: int) -> Entry:
    """The real worker, with the number of threads it was given as its entry's detail."""
    from transcode.pipeline import work

    return dataclasses.replace(work(source, staging, settings, crosscheck, threads), detail=str(threads))


def test_files_left_alone_get_the_idle_workers_threads(tmp_path: Path) -> None:
    """A lone file (a tomosynthesis object, the tail of a run) is not held
    to one worker's share of the cores."""
    src = tmp_path / "src"
    src.mkdir()
    write(Spec("CT", 48, 48, seed=1), src / "alone.dcm")
    with FolderArchive(tmp_path / "one", exclusive=True) as archive:
        report = ingest([src], archive, workers=3, threads=1, worker=noting_threads)
    assert [e.detail for e in report.entries] == ["3"]
    for n in range(1, 5):
        write(Spec("CT", 48, 48, seed=n + 1), src / f"{n}.dcm")
    with FolderArchive(tmp_path / "five", exclusive=True) as archive:
        report = ingest([src], archive, workers=2, threads=1, worker=noting_threads)
    # Five files in a window of eight: the last two to be submitted share
    # the two workers with the files still in flight; none runs alone.
    assert [e.detail for e in report.entries] == ["1"] * 5
    assert {e.outcome for e in report.entries} == {"transcoded"}


def noting_pid(source: str, *args: object) -> Entry:
    """The real worker (or a crash on poison files), with its process id as its entry's detail."""
    return dataclasses.replace(crash_on_poison(source, *args), detail=str(os.getpid()))


def test_a_worker_pool_serves_run_after_run_and_survives_a_crash(tmp_path: Path) -> None:
    """STOW-RS ingests through one pool: no interpreter start per request,
    and a crashing worker costs its file, not the next run."""
    src = tmp_path / "src"
    for n in range(4):
        (src / f"run{n}").mkdir(parents=True)
        write(Spec("CT", 48, 48, seed=n), src / f"run{n}" / "ct.dcm")
    write(Spec("CT", 48, 48, seed=9), src / "run2" / "poison.dcm")
    pool = WorkerPool(1)
    try:
        with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
            runs = [ingest([src / f"run{n}"], archive, pool=pool, worker=noting_pid).entries for n in range(4)]
            assert verify_archive(archive) == []
    finally:
        pool.close()
    outcomes = [{Path(e.source_path).name: e.outcome for e in run} for run in runs]
    assert outcomes == [{"ct.dcm": "transcoded"}, {"ct.dcm": "transcoded"},
                        {"ct.dcm": "transcoded", "poison.dcm": "failed"}, {"ct.dcm": "transcoded"}]
    pids = [run[0].detail for run in runs]
    assert pids[0] == pids[1]  # the same worker process, run after run
    assert pids[3] != pids[0]  # the pool the crash broke was replaced


def six_and_poison(src: Path) -> None:
    """Six small CT files, 0.dcm to 5.dcm, and poison.dcm, in `src`."""
    src.mkdir()
    for n in range(6):
        write(Spec("CT", 48, 48, seed=n), src / f"{n}.dcm")
    write(Spec("CT", 48, 48, seed=9), src / "poison.dcm")


def test_a_worker_crash_fails_that_file_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    six_and_poison(src)
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([src], archive, workers=2, worker=crash_on_poison)
        outcomes = {Path(e.source_path).name: (e.outcome, e.reason) for e in report.entries}
        assert outcomes.pop("poison.dcm") == ("failed", "worker_crashed")
        assert set(outcomes.values()) == {("transcoded", None)} and len(outcomes) == 6
        assert verify_archive(archive) == []


def test_files_that_finish_together_are_committed_together(tmp_path: Path, monkeypatch) -> None:
    """One index transaction (and one fsync per folder) serves every file
    that finishes within the settle window, not one per file."""
    src = tmp_path / "src"
    src.mkdir()
    for n in range(12):
        write(Spec("CT", 32, 32, seed=n), src / f"{n:02d}.dcm")
    monkeypatch.setattr(pipeline, "SETTLE_WINDOW", 60.0)
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        batches: list[int] = []
        record = archive.index.record
        monkeypatch.setattr(archive.index, "record", lambda records: (batches.append(len(records)), record(records)))
        report = ingest([src], archive, workers=2, threads=1)
        assert batches == [12]
        assert archive.index.counts()["instances"] == 12 and verify_archive(archive) == []
    assert [Path(e.source_path).name for e in report.entries] == [f"{n:02d}.dcm" for n in range(12)]


def test_readable_instances_are_archived_whatever_pydicom_makes_of_them(tmp_path: Path) -> None:
    """A data set pydicom cannot parse (sequences 400 deep), a bare data set
    without File Meta and a header with a value pydicom cannot convert are
    archived: indexed by what could be read (the value that does not
    convert as UN bytes), stored as received (the bare one behind File Meta
    built for it)."""
    from tests.test_bad_input import _before, _ct, _sequence

    src = tmp_path / "src"
    src.mkdir()
    (src / "deep.dcm").write_bytes(_before(_ct(), b"\x09\x00\x10\x00LO", _sequence(400, b"")))
    shutil.copy(PYDICOM_FILES / "rtstruct.dcm", src / "bare.dcm")
    shutil.copy(PYDICOM_FILES / "badVR.dcm", src / "badVR.dcm")  # an IS of "1A": no DICOM JSON for it
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([src], archive, workers=1)
        entries = {Path(e.source_path).name: e for e in report.entries}
        assert (entries["badVR.dcm"].outcome, entries["badVR.dcm"].reason) == ("kept", "bad_pixel_data")
        described = json.loads(archive.index.instance(entries["badVR.dcm"].sop_uid).dicom_json)
        assert described["00280008"] == {"vr": "UN", "InlineBinary": base64.b64encode(b"1A").decode()}  # as received
        assert described["00100010"]["Value"] == [{"Alphabetic": "Lastname^Firstname"}]  # and all else as pydicom writes it
        assert (entries["deep.dcm"].outcome, entries["deep.dcm"].reason) == ("kept", "reader_error")
        assert (entries["bare.dcm"].outcome, entries["bare.dcm"].file_meta_constructed) == ("kept", True)
        for name, base in (("deep.dcm", PYDICOM_FILES / "CT_small.dcm"), ("bare.dcm", PYDICOM_FILES / "rtstruct.dcm")):
            row = archive.index.instance(entries[name].sop_uid)
            assert row.sop_uid == pydicom.dcmread(base, force=True).SOPInstanceUID and row.frames == 0
            stored = archive.read(row.path)
            assert stored[128:132] == b"DICM" and stored.endswith((src / name).read_bytes())
        assert verify_archive(archive) == []
