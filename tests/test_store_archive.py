"""An archive over a Store (transcode/archive/objects.py): the same ingest
as into a folder, objects in the store, index and staging in a local
catalog; `transcode ingest --archive s3://...` into a real SeaweedFS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import imagecodecs
import pytest

from tests import seaweed
from tests.test_ingest import make_study
from tests.test_listen import relabel, sop_uid
from tests.test_server_stow import CONTENT_TYPE, body
from transcode.archive import ArchiveMismatch, FolderArchive
from transcode.archive.objects import MARKER, ArchiveURLError, StoreArchive, open_archive
from transcode.archive.store import Archive
from transcode.catalog.base import FrameRow, InstanceRow
from transcode.catalog.sqlite import SQLiteCatalog
from transcode.cli import EXIT_FAILED, EXIT_USAGE, main
from transcode.codecs import htj2k
from transcode.digest import Digest
from transcode.pipeline import ingest
from transcode.stores import ByteRange, MemoryStore
from transcode.stores.s3 import S3Store


def assert_frames_read_back(archive: Archive, row: InstanceRow) -> None:
    """Every frame, read through the archive (one by one and all in one
    `read_ranges` call), decodes to the source pixels the ingest recorded."""
    frames = archive.index.frames(row.sop_uid)
    assert len(frames) == row.frames
    together = archive.read_ranges(row.path, [ByteRange(f.offset, f.offset + f.length) for f in frames])
    digest = Digest()
    for frame, data in zip(frames, together, strict=True):
        view = memoryview(bytearray(frame.length))
        archive.read_into(row.path, frame.offset, view)
        assert view == data
        digest.update(htj2k.decode(bytes(data)).data)
    assert digest.hexdigest() == row.pixel_digest


def test_the_same_ingest_as_into_a_folder(tmp_path: Path) -> None:
    """Into a folder and into a store: the same outcomes, byte-identical
    objects under the same keys, frames read back bit-exact; a rerun skips."""
    expected = make_study(tmp_path / "src")
    with FolderArchive(tmp_path / "folder", exclusive=True) as folder:
        by_folder = ingest([tmp_path / "src"], folder, workers=2)
        folder_rows = {row.sop_uid: row for row in folder.index.instances()}
    store = MemoryStore()
    with StoreArchive(store, tmp_path / "catalog", name="memory", exclusive=True) as archive:
        report = ingest([tmp_path / "src"], archive, workers=2)
        assert archive.root is None
        outcomes = {str(Path(e.source_path).relative_to(tmp_path / "src")): e.outcome for e in report.entries}
        assert outcomes == expected
        assert outcomes == {str(Path(e.source_path).relative_to(tmp_path / "src")): e.outcome
                            for e in by_folder.entries}
        rows = {row.sop_uid: row for row in archive.index.instances()}
        assert rows.keys() == folder_rows.keys()
        for sop, row in rows.items():
            assert row.path == folder_rows[sop].path
            assert store.get(row.path) == (tmp_path / "folder" / row.path).read_bytes()
            if row.outcome == "transcoded":
                assert_frames_read_back(archive, row)
        stored = set(store.list("objects/")) | set(store.list("conflicts/"))
        assert stored == {str(p.relative_to(tmp_path / "folder")) for p in (tmp_path / "folder").rglob("*.dcm")
                          if "staging" not in p.parts}
        assert not any((tmp_path / "catalog" / "staging").iterdir())  # placed objects leave staging
        again = ingest([tmp_path / "src"], archive, workers=2)
        assert again.skipped == len(expected) - 2  # all but the two failed files


OHIF = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def test_served_from_a_store(tmp_path: Path) -> None:
    """The DICOMweb app over a store archive: QIDO from the index, frames
    (whole, a byte range) from the store, checked against their digests; a
    truncated or missing object is refused with its reason, as for a folder."""
    from fastapi.testclient import TestClient

    from tests.served import multipart_parts
    from transcode.server import create_app

    make_study(tmp_path / "src")
    store = MemoryStore()
    with StoreArchive(store, tmp_path / "catalog", name="memory", exclusive=True) as archive:
        ingest([tmp_path / "src"], archive, workers=2)
    with StoreArchive(store, tmp_path / "catalog", name="memory", read_only=True) as archive:
        client = TestClient(create_app(archive))
        rows = [row for row in archive.index.instances() if row.outcome == "transcoded"]
        study = rows[0].study_uid
        assert len(client.get(f"/dicomweb/studies/{study}/instances").json()) == len(list(archive.index.instances()))
        for row in rows:
            base = f"/dicomweb/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"
            response = client.get(f"{base}/frames/1", headers={"Accept": OHIF})
            assert response.status_code == 200, response.text
            (_, payload), = multipart_parts(response.headers["content-type"], response.content)
            frame = archive.index.frames(row.sop_uid)[0]
            assert payload == store.get(row.path)[frame.offset:frame.offset + frame.length]
            ranged = client.get(f"{base}/frames/1", headers={"Accept": "image/jphc", "Range": "bytes=10-99"})
            assert ranged.status_code == 206 and ranged.content == payload[10:100]
        # A region is cut from the stored tiles through one multi-range read (the routes that read
        # whole objects answer as for a folder archive: tests/test_store_doors.py).
        region = client.get(f"{base}/frames/1/region?x=0&y=0&w=32&h=32", headers={"Accept": "image/jphc"})
        assert region.status_code == 200  # the covering tiles: the frame's pixels from (0, 0)
        cut, whole = imagecodecs.htj2k_decode(region.content), imagecodecs.htj2k_decode(payload)
        assert cut.shape[0] >= 32 and (cut[:32, :32] == whole[:32, :32]).all()
        stow = client.post("/dicomweb/studies", content=body(b"unread"), headers={"Content-Type": CONTENT_TYPE})
        assert stow.status_code == 503 and stow.json()["error"] == "read_only"  # opened read-only: no STOW-RS
        damaged, missing = rows[0], rows[1]
        store.put(damaged.path, store.get(damaged.path)[:-100])
        store.delete(missing.path)
        for row, reason in ((damaged, "object_truncated"), (missing, "object_missing")):
            base = f"/dicomweb/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"
            response = client.get(f"{base}/frames/{row.frames}", headers={"Accept": OHIF})
            assert response.status_code == 500 and response.json()["error"] == reason, response.text
            assert "objects/" not in response.text


def test_an_index_that_is_not_the_stores_is_refused(tmp_path: Path) -> None:
    """The marker lives in the store: a fresh catalog over a store with
    objects, or another archive's catalog, is refused before any write."""
    store = MemoryStore()
    make_study(tmp_path / "src")
    with StoreArchive(store, tmp_path / "catalog", name="memory", exclusive=True) as archive:
        ingest([tmp_path / "src" / "mr"], archive, workers=1)
    assert store.exists(MARKER)
    with pytest.raises(ArchiveMismatch):
        StoreArchive(store, tmp_path / "fresh", name="memory", exclusive=True)
    with StoreArchive(MemoryStore(), tmp_path / "other", name="other", exclusive=True):
        pass
    with pytest.raises(ArchiveMismatch, match="another archive"):
        StoreArchive(store, tmp_path / "other", name="memory", exclusive=True)
    with StoreArchive(store, tmp_path / "catalog", name="memory", read_only=True) as archive:
        assert archive.index.counts()["instances"] == 1


def test_places_upload_side_by_side_and_land_in_order(tmp_path: Path) -> None:
    """`place` starts a put and returns; a read of the key, or `flush`,
    waits for it; the later of two places of one key wins; a put that
    fails raises at the flush, after the others landed."""
    store = MemoryStore()
    with StoreArchive(store, tmp_path / "catalog", name="memory", exclusive=True) as archive:
        staging = archive.staging()
        for n in range(20):
            (staging / f"{n}.dcm").write_bytes(b"%d" % n * 1000)
            archive.place(staging / f"{n}.dcm", f"objects/{n % 10}.dcm")  # each key twice: the second wins
        assert archive.read("objects/3.dcm") == b"13" * 1000  # waits for its put
        archive.flush()
        assert {key: store.get(key) for key in store.list("objects/")} == {
            f"objects/{n}.dcm": b"%d" % (n + 10) * 1000 for n in range(10)}
        assert not any(staging.iterdir())  # every staged file removed once stored
        (staging / "a.dcm").write_bytes(b"a")
        archive.place(staging / "gone.dcm", "objects/gone.dcm")  # no such staged file: its put fails
        archive.place(staging / "a.dcm", "objects/a.dcm")
        with pytest.raises(OSError):
            archive.flush()
        assert store.get("objects/a.dcm") == b"a" and not store.exists("objects/gone.dcm")


def test_archive_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_archive(tmp_path / "plain") as archive:
        assert isinstance(archive, FolderArchive)
    for url, catalog in [("s3://bucket/prefix", None), (str(tmp_path / "plain"), tmp_path / "c"),
                         ("gs://bucket/x", tmp_path / "c"), ("s3:///no-bucket", tmp_path / "c")]:
        with pytest.raises(ArchiveURLError):
            open_archive(url, catalog=catalog)
    assert main(["ingest", str(tmp_path), "--archive", "s3://bucket/p"]) == EXIT_USAGE
    # Commands that take a folder only refuse a URL rather than make a folder "s3:" of it.
    monkeypatch.chdir(tmp_path)
    assert main(["migrate", "--from", "PACS@127.0.0.1:9", "--archive", "s3://bucket/p"]) == EXIT_USAGE
    assert not Path("s3:").exists()


def test_cli_ingest_into_s3(tmp_path: Path, s3_server: seaweed.Seaweed, monkeypatch: pytest.MonkeyPatch) -> None:
    """`transcode ingest --archive s3://BUCKET/PREFIX --catalog DIR` with the
    AWS variables: every instance archived, the objects in the bucket, the
    index lists them, frames read back through the archive bit-exact."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    expected = make_study(tmp_path / "src")
    url = f"s3://{s3_server.bucket}/archive-{uuid.uuid4().hex[:8]}"
    assert main(["ingest", str(tmp_path / "src"), "--archive", url, "--catalog", str(tmp_path / "catalog"),
                 "--workers", "2"]) == EXIT_FAILED  # the study holds broken files and a conflict
    bucket = S3Store.from_url(url)
    with open_archive(url, catalog=tmp_path / "catalog", read_only=True) as archive:
        rows = list(archive.index.instances())
        assert len(rows) == sum(outcome in ("transcoded", "kept") for outcome in expected.values())
        assert set(bucket.list("objects/")) == {row.path for row in rows}
        assert len(list(bucket.list("conflicts/"))) == 1
        for row in rows:
            data = bucket.get(row.path)
            digest = Digest()
            digest.update(data)
            assert len(data) == row.size and digest.hexdigest() == row.object_digest
            if row.outcome == "transcoded":
                assert_frames_read_back(archive, row)
    assert_served_over_http(url, tmp_path / "catalog", rows, bucket, tmp_path / "src" / "ct" / "0.dcm")
    # A second run over the same store and catalog does nothing new.
    assert main(["ingest", str(tmp_path / "src"), "--archive", url, "--catalog", str(tmp_path / "catalog")]) \
        == EXIT_FAILED
    with open_archive(url, catalog=tmp_path / "catalog", read_only=True) as archive:
        assert archive.index.counts()["instances"] == len(rows) + 1  # and the one sent with STOW-RS


def assert_served_over_http(url: str, catalog: Path, rows: list[InstanceRow], bucket: S3Store, sent: Path) -> None:
    """`transcode serve --archive s3://... --catalog DIR` answers QIDO,
    serves each transcoded instance's first frame as stored in the bucket
    (then from its read cache: asked again while the object is away from the
    bucket, the same bytes), and stores a new instance (`sent`, relabelled)
    sent with STOW-RS."""
    from tests.peers import free_port, stop
    from tests.served import multipart_parts

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "transcode.cli", "serve", "--archive", url, "--catalog",
                                str(catalog), "--port", str(port), "--log-level", "warning", "--read-cache-mb", "16"],
                               stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/dicomweb/studies", timeout=10) as response:
                    assert len(json.loads(response.read())) == 1
                    break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)
        for row in rows:
            if row.outcome != "transcoded":
                continue
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/dicomweb/studies/{row.study_uid}/series/{row.series_uid}/instances/"
                f"{row.sop_uid}/frames/1", headers={"Accept": OHIF})
            with urllib.request.urlopen(request, timeout=30) as response:
                (_, payload), = multipart_parts(response.headers["content-type"], response.read())
            frame = first_frame(catalog, row)
            assert payload == bucket.get_range(row.path, ByteRange(frame.offset, frame.offset + frame.length))
            stored_object = bucket.get(row.path)
            bucket.delete(row.path)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    assert multipart_parts(response.headers["content-type"], response.read())[0][1] == payload
            finally:
                bucket.put(row.path, stored_object)
        new = relabel(sent, catalog.parent / "stowed.dcm")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/dicomweb/studies", data=body(new.read_bytes()),
                                         headers={"Content-Type": CONTENT_TYPE}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
        stored = SQLiteCatalog(catalog / "index.sqlite", read_only=True)
        try:
            row = stored.instance(sop_uid(new))
        finally:
            stored.close()
        assert row is not None and bucket.exists(row.path)
    finally:
        stop(process)


def first_frame(catalog: Path, row: InstanceRow) -> FrameRow:
    index = SQLiteCatalog(catalog / "index.sqlite", read_only=True)
    try:
        return index.frames(row.sop_uid)[0]
    finally:
        index.close()
