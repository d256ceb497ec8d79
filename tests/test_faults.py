"""Faults answered as faults: a full disk (a 2 MB tmpfs), a read-only archive
(the tmpfs remounted read-only), a damaged index.

Mounting needs root (the tests run as root in CI); without it they skip."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from fixtures.generate import Spec, write, write_ct_series
from tests.served import serve_command
from transcode.archive import FolderArchive
from transcode.server import create_app

BOUNDARY = "sent-by-a-test"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _body(*payloads: bytes) -> bytes:
    parts = [f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in payloads]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _mount(folder: Path, options: str) -> None:
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=False,
                            capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")


def _remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs at tmp_path/fs, unmounted after."""
    folder = tmp_path / "fs"
    folder.mkdir()
    _mount(folder, "size=2m")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "transcode.cli", *args], check=False, capture_output=True, text=True,
                          timeout=300)


def _index_consistent(root: Path) -> int:
    """The instances the index lists, each with its object in place."""
    with FolderArchive(root, read_only=True) as archive:
        rows = archive.index.db.execute("SELECT path FROM instances").fetchall()
    for (path,) in rows:
        assert (root / path).is_file(), path
    return len(rows)


def test_ingest_on_a_full_disk_stops_clearly_and_a_rerun_completes(small_fs: Path, tmp_path: Path) -> None:
    sources = write_ct_series(tmp_path / "src", 12)  # about 6 MB of pixels, 3 MB transcoded: more than 2 MB
    archive = small_fs / "archive"
    first = _cli("ingest", str(tmp_path / "src"), "--archive", str(archive), "--workers", "1")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    said = first.stdout + first.stderr  # a message (the index's disk), or each file's outcome (an object's)
    assert "disk is full" in said or "No space left" in said, said
    stored = _index_consistent(archive)
    assert stored < len(sources)
    _remount(small_fs, "size=64m")
    second = _cli("ingest", str(tmp_path / "src"), "--archive", str(archive), "--workers", "1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _index_consistent(archive) == len(sources)
    assert _cli("verify", "--archive", str(archive)).returncode == 0


def test_stow_on_a_full_disk_is_507_and_stores_nothing(small_fs: Path, tmp_path: Path) -> None:
    payloads = [p.read_bytes() for p in write_ct_series(tmp_path / "src", 6)]  # 3 MB: does not fit
    root = small_fs / "archive"
    with FolderArchive(root) as archive, TestClient(create_app(archive, stow_workers=1)) as client:
        r = client.post("/dicomweb/studies", content=_body(*payloads), headers={"Content-Type": CONTENT_TYPE})
        assert r.status_code == 507, r.text
        assert r.json()["error"] == "insufficient_storage"
        assert str(small_fs) not in r.text
        assert list((root / "spool" / "uploads").iterdir()) == []  # the spooled body is gone
        one = client.post("/dicomweb/studies", content=_body(_small(tmp_path)),
                          headers={"Content-Type": CONTENT_TYPE})
        assert one.status_code == 200, one.text  # what fits is stored once there is room
    assert _index_consistent(root) == 1


def _small(tmp_path: Path) -> bytes:
    return write(Spec("CT", 32, 32, 1, 16, 12, seed=3), tmp_path / "small.dcm").read_bytes()


def test_read_only_archive_serves_and_verifies(small_fs: Path, tmp_path: Path) -> None:
    root = small_fs / "archive"
    source = write(Spec("MR", 32, 32, 2, 16, 12, seed=1), tmp_path / "mr.dcm")
    assert _cli("ingest", str(source), "--archive", str(root), "--workers", "1").returncode == 0
    _remount(small_fs, "ro")
    verify = _cli("verify", "--archive", str(root))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "Traceback" not in verify.stderr
    with serve_command(root, "--audit-dir", str(tmp_path / "audit")) as base:
        assert len(requests.get(f"{base}/instances", timeout=10).json()) == 1
        r = requests.post(f"{base}/studies", data=_body(_small(tmp_path)), headers={"Content-Type": CONTENT_TYPE},
                          timeout=30)
        assert r.status_code == 503 and r.json()["error"] == "read_only", r.text


def _damage(index: Path) -> None:
    """Overwrite every page of the SQLite file but the first (its header)."""
    data = bytearray(index.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xa5" * (len(data) - page)
    index.write_bytes(bytes(data))


def test_damaged_index_gives_one_clear_message(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    write_ct_series(tmp_path / "src", 3, rows=64, columns=64)
    assert _cli("ingest", str(tmp_path / "src"), "--archive", str(root), "--workers", "1").returncode == 0
    _damage(root / "index.sqlite")
    verify = _cli("verify", "--archive", str(root))
    assert verify.returncode == 1 and "Traceback" not in verify.stderr, verify.stderr
    assert "--rebuild-index" in verify.stdout and "1 problem(s)" in verify.stdout, verify.stdout
    serve = _cli("serve", "--archive", str(root), "--port", "0")
    assert serve.returncode == 2 and "Traceback" not in serve.stderr, serve.stderr
    assert serve.stderr.count("--rebuild-index") == 1, serve.stderr


def test_index_damaged_while_serving_is_503_not_500(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    write_ct_series(tmp_path / "src", 3, rows=64, columns=64)
    assert _cli("ingest", str(tmp_path / "src"), "--archive", str(root), "--workers", "1").returncode == 0
    with FolderArchive(root, read_only=True) as archive, TestClient(create_app(archive)) as client:
        _damage(root / "index.sqlite")
        for url in ("/dicomweb/studies", "/dicomweb/series?Modality=CT", "/dicomweb/instances"):
            r = client.get(url)
            assert r.status_code == 503, (url, r.status_code, r.text)
            assert r.json()["error"] == "index_unreadable" and str(root) not in r.text
