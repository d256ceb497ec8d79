"""The objects are the truth: an index that is not the archive's is refused
by every writer (ingest, STOW-RS, serve), `verify` writes nothing, and a
read-only archive is still served."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from fixtures.generate import Spec, write
from tests.served import Served
from tests.test_server_stow import CONTENT_TYPE, body
from transcode.archive import ArchiveMismatch, FolderArchive
from transcode.archive.identity import Identity, read_marker, write_marker
from transcode.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from transcode.digest import file_digest
from transcode.pipeline import ingest
from transcode.server import create_app

REBUILD = "transcode verify --archive"


@pytest.fixture
def archive(served: Served, tmp_path: Path) -> Path:
    """A copy of the served archive (7 instances), for each test to damage."""
    return Path(shutil.copytree(served.root, tmp_path / "archive"))


def empty_index(root: Path) -> None:
    (root / "index.sqlite").write_bytes(b"")


def a_stored_instance(served: Served, root: Path) -> tuple[Path, pydicom.Dataset]:
    """The stored object of the first CT instance, and a re-sent copy of it
    with the same UIDs and other pixels (what the issue's STOW overwrote)."""
    study, series, sop = served.find("CT")
    resent = served.source(sop)
    resent.PixelData = bytes(len(resent.PixelData))
    return root / "objects" / study / series / f"{sop}.dcm", resent


def test_a_new_archive_gets_an_identity_and_each_storing_session_raises_its_generation(tmp_path: Path) -> None:
    src = write(Spec("CT", 16, 16), tmp_path / "ct.dcm")
    with FolderArchive(tmp_path / "a", exclusive=True) as archive:
        created = read_marker(archive.layout.marker)
        assert created is not None and archive.index.identity() == created
        ingest([src], archive, workers=1)
        assert read_marker(archive.layout.marker) == archive.index.identity() == created.next()  # before the object
    stored = created.next().next()  # and when the session ended
    assert read_marker(tmp_path / "a" / "archive.json") == stored
    with FolderArchive(tmp_path / "a", exclusive=True) as archive:  # the same file again: a duplicate
        assert ingest([src], archive, workers=1).skipped == 1
    with FolderArchive(tmp_path / "a") as archive:  # nor does a reader write
        assert archive.identity == stored and archive.mismatch is None
    assert read_marker(tmp_path / "a" / "archive.json") == stored


def test_an_emptied_index_is_refused_by_ingest_and_serve_and_nothing_is_written(
        served: Served, archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored, resent = a_stored_instance(served, archive)
    before = file_digest(stored)
    empty_index(archive)
    resent.save_as(archive.parent / "resent.dcm")

    assert main(["ingest", str(archive.parent / "resent.dcm"), "--archive", str(archive)]) == EXIT_USAGE
    assert "is missing, empty or not this archive's" in capsys.readouterr().err
    assert main(["serve", "--archive", str(archive)]) == EXIT_USAGE
    assert f"{REBUILD} {archive} --rebuild-index" in capsys.readouterr().err
    with pytest.raises(ArchiveMismatch, match="--rebuild-index"):
        FolderArchive(archive)
    assert (archive / "index.sqlite").stat().st_size == 0  # no schema written into it
    assert file_digest(stored) == before


def test_stow_refuses_when_the_index_is_emptied_under_a_running_server(served: Served, archive: Path) -> None:
    stored, resent = a_stored_instance(served, archive)
    before = file_digest(stored)
    with FolderArchive(archive) as opened:
        client = TestClient(create_app(opened, stow_workers=1))
        empty_index(archive)
        resent.save_as(archive.parent / "resent.dcm")
        r = client.post("/dicomweb/studies", content=body((archive.parent / "resent.dcm").read_bytes()),
                        headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 503 and r.json()["error"] == "index_mismatch", r.text
    assert "--rebuild-index" in r.json()["detail"]
    assert file_digest(stored) == before and (archive / "index.sqlite").stat().st_size == 0


def test_another_archives_index_is_refused(archive: Path, tmp_path: Path) -> None:
    with FolderArchive(tmp_path / "other", exclusive=True):
        pass
    shutil.copy(tmp_path / "other" / "index.sqlite", archive / "index.sqlite")
    with pytest.raises(ArchiveMismatch, match="belongs to another archive"):
        FolderArchive(archive, exclusive=True)


def test_an_older_copy_of_the_index_is_refused(served: Served, archive: Path, tmp_path: Path) -> None:
    shutil.copy(archive / "index.sqlite", tmp_path / "backup.sqlite")
    source = served.sources[served.find("MR")[2]]
    more = pydicom.dcmread(source)
    more.SOPInstanceUID = generate_uid()
    more.save_as(tmp_path / "more.dcm")
    assert main(["ingest", str(tmp_path / "more.dcm"), "--archive", str(archive), "--workers", "1"]) == EXIT_OK
    shutil.copy(tmp_path / "backup.sqlite", archive / "index.sqlite")  # restored: it lacks the new instance
    with pytest.raises(ArchiveMismatch, match="older than its objects"):
        FolderArchive(archive, exclusive=True)


def test_a_crash_between_index_and_marker_is_accepted_and_the_marker_repaired(archive: Path) -> None:
    marker = read_marker(archive / "archive.json")
    assert marker is not None
    write_marker(archive / "archive.json", Identity(marker.archive, marker.generation - 1))  # the index is one ahead
    with FolderArchive(archive) as opened:
        assert opened.mismatch is None
    assert read_marker(archive / "archive.json") == marker


def test_an_archive_made_before_markers_is_adopted_when_its_index_lists_every_object(archive: Path) -> None:
    (archive / "archive.json").unlink()
    # A conflicting copy sent by two source files: one file, two rows.
    copy = archive / "conflicts" / "1.2.3" / "0123456789abcdef0123456789abcdef.dcm"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"a conflicting copy")
    with closing(sqlite3.connect(archive / "index.sqlite", isolation_level=None)) as db:
        db.execute("DROP TABLE meta")
        db.executemany("INSERT INTO conflicts (sop_uid, path, object_digest, source_path, at) VALUES (?, ?, ?, ?, 0)",
                       [("1.2.3", str(copy.relative_to(archive)), "blake3:0", source) for source in ("/a", "/b")])
    with FolderArchive(archive) as opened:
        assert opened.identity is not None and opened.index.counts()["instances"] == 7
    assert read_marker(archive / "archive.json") == opened.identity

    (archive / "archive.json").unlink()
    with closing(sqlite3.connect(archive / "index.sqlite", isolation_level=None)) as db:
        db.execute("DELETE FROM frames")
        db.execute("DELETE FROM instances WHERE outcome = 'kept'")
    with pytest.raises(ArchiveMismatch, match="has 7 objects and 1 conflicting copies but its index lists 6 and 1"):
        FolderArchive(archive)
    assert not (archive / "archive.json").exists()


def test_an_unreadable_marker_is_refused_not_guessed(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (archive / "archive.json").write_text("{")
    with pytest.raises(ArchiveMismatch, match="archive.json cannot be read"):
        FolderArchive(archive, exclusive=True)
    assert main(["verify", "--archive", str(archive)]) == EXIT_FAILED
    assert "archive.json cannot be read" in capsys.readouterr().out
    assert main(["verify", "--archive", str(archive), "--rebuild-index"]) == EXIT_OK
    with FolderArchive(archive) as opened:
        assert opened.index.counts()["instances"] == 7


def test_verify_writes_nothing(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = (archive / "archive.json").read_bytes()
    assert main(["verify", "--archive", str(archive)]) == EXIT_OK
    assert "7 instances checked, 0 problem(s)." in capsys.readouterr().out
    assert (archive / "archive.json").read_bytes() == marker  # a reader is no write session

    empty_index(archive)
    assert main(["verify", "--archive", str(archive)]) == EXIT_FAILED
    assert "--rebuild-index" in capsys.readouterr().out
    assert (archive / "index.sqlite").stat().st_size == 0

    (archive / "index.sqlite").unlink()
    assert main(["verify", "--archive", str(archive)]) == EXIT_USAGE
    assert "objects are stored, `transcode verify --rebuild-index` rebuilds it" in capsys.readouterr().err
    assert not (archive / "index.sqlite").exists()


def test_a_read_only_archive_is_served_and_stow_answers_503(served: Served, archive: Path) -> None:
    stored, resent = a_stored_instance(served, archive)
    index, before = (archive / "index.sqlite").read_bytes(), file_digest(stored)
    resent.save_as(archive.parent / "resent.dcm")
    with FolderArchive(archive, read_only=True) as opened:
        client = TestClient(create_app(opened, stow_workers=1))
        assert len(client.get("/dicomweb/studies").json()) == 2
        study, series, sop = served.find("CT")
        r = client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1",
                       headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
        assert r.status_code == 200
        r = client.post("/dicomweb/studies", content=body((archive.parent / "resent.dcm").read_bytes()),
                        headers={"Content-Type": CONTENT_TYPE})
        assert r.status_code == 503 and r.json()["error"] == "read_only", r.text
    assert (archive / "index.sqlite").read_bytes() == index and file_digest(stored) == before
    assert not any((archive / "staging").iterdir())


def _mount_read_only_works(tmp_path: Path) -> bool:
    (tmp_path / "probe").mkdir()
    script = f"mount --bind {tmp_path}/probe {tmp_path}/probe && mount -o remount,ro,bind {tmp_path}/probe"
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, check=False)
    return done.returncode == 0


def test_serve_on_a_read_only_mount(served: Served, archive: Path, tmp_path: Path) -> None:
    """The real thing: the archive on a read-only bind mount (a private mount
    namespace, so root's writes are refused too). `serve` notices, opens the
    index immutable, serves, and answers STOW-RS with 503."""
    if shutil.which("unshare") is None or not _mount_read_only_works(tmp_path):
        pytest.skip("needs unshare and mount (root with CAP_SYS_ADMIN)")
    for leftover in archive.glob("index.sqlite-*"):
        leftover.unlink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = (f"mount --bind {archive} {archive} && mount -o remount,ro,bind {archive} && exec {sys.executable} "
              f"-m transcode.cli serve --archive {archive} --port {port} --log-level warning "
              f"--audit-dir {tmp_path / 'audit'}")  # the trail cannot live in a read-only archive
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}/dicomweb/studies"
    try:
        assert "/dicomweb" in proc.stdout.readline()
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url) as response:
                    assert len(json.loads(response.read())) == 2
                    break
            except urllib.error.URLError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        resent = a_stored_instance(served, archive)[1]
        resent.save_as(tmp_path / "resent.dcm")
        request = urllib.request.Request(url, data=body((tmp_path / "resent.dcm").read_bytes()), method="POST",
                                         headers={"Content-Type": CONTENT_TYPE})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 503 and json.loads(refused.value.read())["error"] == "read_only"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "is served read-only" in err
    assert not list(archive.glob("index.sqlite-*"))  # not even SQLite's shared-memory file


def test_commands_take_an_archive_folder_relative_to_the_working_folder(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`transcode verify --archive demo/archive`, as the README spells
    archives, ended in a traceback: the objects listed (absolute) were made
    relative to the root as given (relative). The tests all gave absolute
    paths."""
    (tmp_path / "src").mkdir()
    write(Spec("CT", 16, 16), tmp_path / "src" / "ct.dcm")
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "src", "--archive", "demo/archive"]) == EXIT_OK
    assert main(["verify", "--archive", "demo/archive"]) == EXIT_OK
    assert main(["verify", "--archive", "demo/archive", "--rebuild-index"]) == EXIT_OK
    assert main(["verify", "--archive", "demo/archive"]) == EXIT_OK
