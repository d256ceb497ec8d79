"""`transcode migrate` against a real Orthanc as the legacy PACS: C-FIND,
C-GET (and C-MOVE to our own SCP), states, reruns, filters, a kill; and
against dcmtk's dcmqrscp, a PACS that counts nothing for us."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from fixtures.generate import Spec, demo_study, write
from tests.conftest import PYDICOM_FILES
from tests.peers import Orthanc, dcmqrscp, free_port, orthanc
from transcode.archive import FolderArchive
from transcode.cli import EXIT_OK, EXIT_USAGE, main
from transcode.dimse.migrate import Filters, Migration, MigrationReport, Retrieve, State
from transcode.dimse.scu import RemoteAE
from transcode.service import IngestService
from transcode.transcoder import transcode_file

AET = "TRANSCODE"


def studies(folder: Path) -> dict[str, list[Path]]:
    """Three studies: CT in three transfer syntaxes, an MR pair (one kept
    lossy US beside it), and pydicom's CT_small (a study of its own)."""
    folder.mkdir()
    made: dict[str, list[Path]] = {}
    ct, mr = generate_uid(), generate_uid()
    made[ct] = [write(Spec("CT", 32, 32, 1, 16, 12, transfer_syntax=ts, seed=n), folder / f"ct{n}.dcm", study=ct,
                      number=str(n))
                for n, ts in enumerate((ImplicitVRLittleEndian, RLELossless, JPEGLosslessSV1), 1)]
    made[mr] = [write(Spec("MR", 16, 16, 2, 16, 12, transfer_syntax=ExplicitVRBigEndian, seed=7), folder / "mr.dcm",
                      study=mr),
                write(Spec("US", 16, 16, 1, 8, 8, samples=3, photometric="YBR_FULL_422",
                           transfer_syntax=JPEGBaseline8Bit), folder / "us.dcm", study=mr)]
    small = PYDICOM_FILES / "CT_small.dcm"
    made[str(pydicom.dcmread(small, stop_before_pixels=True).StudyInstanceUID)] = [small]
    return made


def upload(peer: Orthanc, files: list[Path]) -> None:
    for path in files:
        peer.post("/instances", path.read_bytes())


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[Orthanc, int, dict[str, list[Path]]]]:
    """Orthanc holding three studies; it knows us (AET) at a free port for C-MOVE."""
    move_port = free_port()
    with orthanc(tmp_path / "orthanc", modalities={"transcode": [AET, "127.0.0.1", move_port]}) as peer:
        made = studies(tmp_path / "sources")
        upload(peer, [p for files in made.values() for p in files])
        yield peer, move_port, made


def source(peer: Orthanc) -> RemoteAE:
    return RemoteAE(peer.aet, "127.0.0.1", peer.dicom_port)


def migrate(root: Path, peer: Orthanc, filters: Filters | None = None, **options) -> MigrationReport:
    service = IngestService(root, workers=1)
    try:
        return Migration(root, source(peer), service, ae_title=AET, **options).run(filters or Filters())
    finally:
        service.close()


def states(root: Path) -> dict[str, str]:
    with sqlite3.connect(root / "index.sqlite") as db:
        return dict(db.execute("SELECT study_uid, state FROM migration"))


def ledger_rows(root: Path) -> int:
    with sqlite3.connect(root / "index.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]


def archived(root: Path) -> dict[str, tuple[str, str | None, str]]:
    """SOP Instance UID -> (outcome, reason, study)."""
    with FolderArchive(root, read_only=True) as archive:
        return {r.sop_uid: (r.outcome, r.reason, r.study_uid) for r in archive.index.instances()}


def sop_uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def test_migrate_with_c_get_archives_every_instance_and_a_rerun_retrieves_nothing(pacs, tmp_path, capsys) -> None:
    peer, _, made = pacs
    root = tmp_path / "archive"
    report_path = tmp_path / "report.json"
    code = main(["migrate", "--from", f"{peer.aet}@127.0.0.1:{peer.dicom_port}", "--archive", str(root),
                 "--ae-title", AET, "--workers", "1", "--report", str(report_path)])
    assert code == EXIT_OK, capsys.readouterr()
    held = archived(root)
    for study, files in made.items():
        assert {sop for sop, (_, _, s) in held.items() if s == study} == sop_uids(files)
    outcomes = {(o, r) for o, r, _ in held.values()}
    assert ("transcoded", None) in outcomes and ("kept", "lossy_source") in outcomes
    assert states(root) == {study: "done" for study in made}
    report = json.loads(report_path.read_text())
    assert len(report["instances"]) == 6 and {s["state"] for s in report["studies"]} == {"done"}
    assert all(s["method"] == "get" and s["missing"] == [] for s in report["studies"])
    assert main(["verify", "--archive", str(root)]) == EXIT_OK

    rows = ledger_rows(root)
    assert main(["migrate", "--from", f"{peer.aet}@127.0.0.1:{peer.dicom_port}", "--archive", str(root),
                 "--ae-title", AET, "--workers", "1"]) == EXIT_OK
    assert ledger_rows(root) == rows  # nothing retrieved, nothing ingested again
    assert "3 done" in capsys.readouterr().out


def test_a_study_of_many_sop_classes_and_syntaxes_comes_as_stored(tmp_path) -> None:
    """The demo study: CT, MR, CR and US in eight transfer syntaxes. Offered
    one context per SOP class, Orthanc picked one syntax for each and failed
    to transcode J2K to it (0xC000), leaving 5 of 12 instances behind."""
    with orthanc(tmp_path / "orthanc", modalities={"transcode": [AET, "127.0.0.1", free_port()]}) as peer:
        files = demo_study(tmp_path / "demo")
        upload(peer, files)
        root = tmp_path / "archive"
        (study,) = migrate(root, peer).studies
    assert study.state is State.DONE and (study.received, study.archived, study.failed) == (12, 12, 0), study
    assert set(archived(root)) == sop_uids(files)


def test_filters_pick_studies_by_uid_and_modality(pacs, tmp_path) -> None:
    peer, _, made = pacs
    ct, mr, small = made
    root = tmp_path / "archive"
    report = migrate(root, peer, Filters(studies=(mr,)))
    assert [s.study_uid for s in report.studies] == [mr] and states(root) == {mr: "done"}
    migrate(root, peer, Filters(modalities=("CT",)))
    assert states(root) == {mr: "done", ct: "done", small: "done"}  # both CT studies; MR was done
    assert migrate(tmp_path / "other", peer, Filters(modalities=("CR",))).studies == []
    recent = migrate(tmp_path / "recent", peer, Filters(since="20250101"))  # CT_small is dated 20040119
    assert {s.study_uid for s in recent.studies} == {ct, mr}


def test_c_move_to_our_own_scp(pacs, tmp_path) -> None:
    peer, move_port, made = pacs
    root = tmp_path / "archive"
    report = migrate(root, peer, retrieve=Retrieve.MOVE, move_port=move_port)
    assert {s.method for s in report.studies} == {"move"}
    assert {s.state for s in report.studies} == {State.DONE}
    assert set(archived(root)) == set().union(*(sop_uids(files) for files in made.values()))


def test_a_pacs_that_refuses_c_get_is_moved_from(tmp_path) -> None:
    move_port = free_port()
    # Orthanc refuses C-GET from a modality not allowed to: "AllowGet": false
    modality = {"AET": AET, "Host": "127.0.0.1", "Port": move_port, "AllowGet": False}
    with orthanc(tmp_path / "orthanc", modalities={"transcode": modality}) as peer:
        made = studies(tmp_path / "sources")
        ct = next(iter(made))
        upload(peer, made[ct])
        root = tmp_path / "archive"
        assert migrate(root, peer, retrieve=Retrieve.GET).studies[0].state is State.FAILED
        report = migrate(root, peer, move_port=move_port)
        assert [(s.method, s.state) for s in report.studies] == [("move", State.DONE)], report.studies


def test_missing_instances_are_named_and_the_study_is_incomplete(pacs, tmp_path) -> None:
    peer, _, made = pacs
    ct = next(iter(made))
    root = tmp_path / "archive"
    # an instance the PACS holds but the archive refuses: its SOP Instance UID is not a UID
    ds = pydicom.dcmread(made[ct][0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.bad"
    ds.save_as(tmp_path / "bad.dcm")
    peer.post("/instances", (tmp_path / "bad.dcm").read_bytes())
    report = migrate(root, peer, Filters(studies=(ct,)))
    (study,) = report.studies
    assert study.state is State.INCOMPLETE and study.missing == ["1.2.3.4.bad"], study
    assert study.expected == 4 and study.archived == 3 and study.received == 4
    assert report.ingest.counts()["failed"] == 1
    assert states(root) == {ct: "incomplete"}
    assert migrate(root, peer, Filters(studies=(ct,))).studies[0].method == "get"  # retried on the next run


def test_an_interrupted_migration_resumes(pacs, tmp_path) -> None:
    peer, _, made = pacs
    root = tmp_path / "archive"
    command = [sys.executable, "-m", "transcode.cli", "migrate", "--from",
               f"{peer.aet}@127.0.0.1:{peer.dicom_port}", "--archive", str(root), "--ae-title", AET,
               "--workers", "1", "--rate", "3"]  # 20 s between studies: time to kill it after the first
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if (root / "index.sqlite").exists() and "done" in states(root).values():
                    break
            except sqlite3.Error:  # the index is being created: no migration table yet
                pass
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    first = states(root)
    assert list(first.values()).count("done") == 1, first
    done = next(s for s, state in first.items() if state == "done")
    report = migrate(root, peer)
    assert {s.study_uid for s in report.studies if s.method} == set(made) - {done}  # not the done one again
    assert set(states(root).values()) == {"done"}
    assert main(["verify", "--archive", str(root)]) == EXIT_OK


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_migrate_from_dcmqrscp(retrieve, tmp_path, capsys) -> None:
    """dcmtk's query/retrieve SCP: it answers a study-level C-FIND without
    Number of Study Related Instances, so the migration cannot know its
    total; progress counts files and promises no ETA (it printed
    "1/0 files ... ETA 23:59:58")."""
    move_port = free_port()
    with dcmqrscp(tmp_path / "pacs", move_to=(AET, move_port)) as pacs:
        made = studies(tmp_path / "sources")
        sent = [p for files in made.values() for p in files if p.name != "us.dcm"]  # it takes no lossy JPEG
        pacs.store(sent)  # the lossless CT files decompressed by dcmsend
        root = tmp_path / "archive"
        code = main(["migrate", "--from", f"{pacs.aet}@127.0.0.1:{pacs.port}", "--archive", str(root),
                     "--ae-title", AET, "--workers", "1", "--retrieve", retrieve,
                     "--move-port", str(move_port)])
        out, err = capsys.readouterr()
    assert code == EXIT_OK, out + err
    assert set(archived(root)) == sop_uids(sent)
    assert states(root) == {study: "done" for study in made}
    assert "ingest: 1 files, " in err and "ETA" not in err and "/0 files" not in err
    assert main(["verify", "--archive", str(root)]) == EXIT_OK


def test_an_unreachable_pacs_is_a_usage_error(tmp_path, capsys) -> None:
    code = main(["migrate", "--from", f"NOBODY@127.0.0.1:{free_port()}", "--archive", str(tmp_path / "a")])
    assert code == EXIT_USAGE
    assert "association failed" in capsys.readouterr().err


def test_importing_pynetdicom_does_not_make_a_lossless_syntax_lossy(tmp_path) -> None:
    """pynetdicom adds Deflated Image Frame Compression and JPEG XL Lossless
    to pydicom's UID dictionary when imported (as every DIMSE door does):
    the transcoder then called them lossy ("recompressing would compound the
    loss") in this process, and unsupported in one without pynetdicom."""
    import pynetdicom  # noqa: F401  (imported by this module already: said here, where it matters)

    source = write(Spec("CT", 16, 16, 1, 16, 12, transfer_syntax=RLELossless), tmp_path / "rle.dcm")
    for syntax in ("1.2.840.10008.1.2.8.1", "1.2.840.10008.1.2.4.110"):
        relabelled = tmp_path / f"{syntax}.dcm"
        ds = pydicom.dcmread(source)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(relabelled)
        result = transcode_file(relabelled, tmp_path / f"{syntax}.out.dcm")
        assert (result.outcome.value, result.reason.value) == ("kept", "unsupported_transfer_syntax"), result.detail
