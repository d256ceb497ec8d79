"""Every door and every route on an object-store archive: the server's
routes that read whole objects (frames of kept instances, bulk data,
rendered, thumbnails, IIIF, conversion) answer as for a folder archive with
the same files; STOW-RS and `listen` (dcmtk's storescu) store into an S3
archive (SeaweedFS); `verify` finds a deleted object, a damaged one and an
index whose frame map disagrees with its object, in every backend."""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from fixtures.generate import Spec, write
from tests import seaweed
from tests.peers import free_port
from tests.served import multipart_parts
from tests.test_ingest import make_study
from tests.test_listen import dcmtk, relabel, sop_uid
from tests.test_migrate import AET, pacs  # noqa: F401 - the fixture
from tests.test_server_stow import CONTENT_TYPE, body
from transcode.archive import FolderArchive
from transcode.archive.check import verify_archive
from transcode.archive.objects import ArchiveAddress, StoreArchive, open_archive
from transcode.archive.store import Archive
from transcode.catalog.base import InstanceRow
from transcode.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from transcode.codecs import htj2k
from transcode.codecs.htj2k import EncodeSettings
from transcode.dimse.receiver import Receiver
from transcode.pipeline import ingest
from transcode.server import create_app
from transcode.stores import MemoryStore, Store
from transcode.stores.base import ByteRange
from transcode.stores.s3 import S3Store

from .conftest import PYDICOM_FILES

OHIF = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
EXPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
NATIVE = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
#: Instance routes (after .../instances/SOP) and the Accept header each is asked with.
ROUTES = [("/frames/1", OHIF), ("/frames/1", "multipart/related; type=application/octet-stream"),
          ("/rendered", "image/png"), ("/thumbnail", "image/jpeg"), ("/frames/1/rendered", "image/png"),
          ("/bulkdata/00100010", "application/octet-stream"), ("", EXPLICIT), ("/metadata", "application/dicom+json")]


@pytest.fixture
def s3_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new prefix in the SeaweedFS bucket, the AWS variables set to reach it."""
    server: seaweed.Seaweed = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{server.bucket}/archive-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["memory", "s3"])
def store(request: pytest.FixtureRequest) -> Store:
    """An empty store: in memory, or a prefix of a real S3 server."""
    if request.param == "memory":
        return MemoryStore()
    return S3Store.from_url(request.getfixturevalue("s3_url"))


def archives(tmp_path: Path, store: Store) -> tuple[FolderArchive, StoreArchive]:
    """The same study ingested into a folder archive and into `store`."""
    make_study(tmp_path / "src")
    with FolderArchive(tmp_path / "folder", exclusive=True) as folder:
        ingest([tmp_path / "src"], folder, workers=2)
    with StoreArchive(store, tmp_path / "catalog", name="store", exclusive=True) as archive:
        ingest([tmp_path / "src"], archive, workers=2)
    return FolderArchive(tmp_path / "folder"), StoreArchive(store, tmp_path / "catalog", name="store")


def instance_url(row: InstanceRow) -> str:
    return f"/dicomweb/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"


def urls(row: InstanceRow) -> list[tuple[str, str]]:
    """Every route of `row`'s instance that reads its object, with the Accept header to send."""
    base = instance_url(row)
    iiif = base.replace("/dicomweb/", "/iiif/") + "/frames/1"
    return [*((base + route, accept) for route, accept in ROUTES),
            (iiif + "/info.json", "application/json"), (iiif + "/full/max/0/default.png", "image/png")]


def answer(client: TestClient, url: str, accept: str) -> tuple[int, str | None, bytes | list[bytes]]:
    """Status, content type without its boundary, and body (a multipart body as its parts)."""
    response = client.get(url, headers={"Accept": accept})
    kind = response.headers.get("content-type")
    if kind and kind.startswith("multipart/"):
        return response.status_code, kind.split("; boundary=")[0], [p for _, p in multipart_parts(kind, response.content)]
    return response.status_code, kind, response.content


def test_routes_answer_as_from_a_folder(tmp_path: Path, store: Store) -> None:
    """Frames of transcoded and kept instances, bulk data, rendered images,
    thumbnails, IIIF and the Explicit VR conversion: the same answers, byte
    for byte, from the store as from a folder archive with the same files."""
    folder, archive = archives(tmp_path, store)
    with folder, archive:
        mine, theirs = TestClient(create_app(archive)), TestClient(create_app(folder))
        rows = list(folder.index.instances())
        assert {row.outcome for row in rows} == {"transcoded", "kept"}
        for row in rows:
            for url, accept in urls(row):
                expected = answer(theirs, url, accept)
                assert expected[0] == 200, (row.outcome, url, expected)
                assert answer(mine, url, accept) == expected, (row.outcome, url)


@pytest.mark.parametrize("backend", ["folder", "memory"])
def test_a_deleted_object_answers_a_problem_on_every_route(tmp_path: Path, backend: str) -> None:
    """Rendered, thumbnail, bulk data, IIIF and conversion of an instance
    whose object was deleted: a 500 with its reason, as the frames route
    answers, no path in the body and nothing cached."""
    make_study(tmp_path / "src")
    store = MemoryStore()
    opened: Archive = FolderArchive(tmp_path / "a", exclusive=True) if backend == "folder" else \
        StoreArchive(store, tmp_path / "catalog", name="memory", exclusive=True)
    with opened as archive:
        ingest([tmp_path / "src"], archive, workers=2)
        rows = list(archive.index.instances())
        for row in rows:
            if backend == "folder":
                archive.layout.resolve(row.path).unlink()  # type: ignore[attr-defined]
            else:
                store.delete(row.path)
        client = TestClient(create_app(archive))
        for row in rows:
            for url, accept in urls(row):
                if url.endswith("/metadata"):  # from the index
                    continue
                response = client.get(url, headers={"Accept": accept})
                assert response.status_code == 500, (row.outcome, url, response.text)
                assert response.json()["error"] == "object_missing", (url, response.text)
                assert response.headers["cache-control"] == "no-store"
                assert "objects/" not in response.text and str(tmp_path) not in response.text


@pytest.mark.parametrize("backend", ["folder", "memory"])
def test_verify_finds_deleted_damaged_and_a_disagreeing_frame_map(tmp_path: Path, backend: str) -> None:
    """One check for every backend: a deleted object, one overwritten with
    a flipped byte (same size), an index row whose frame offset is moved;
    a stray object; a whole archive has no problem."""
    make_study(tmp_path / "src")
    store = MemoryStore()

    def opened(**options: bool) -> Archive:
        if backend == "folder":
            return FolderArchive(tmp_path / "a", **options)
        return StoreArchive(store, tmp_path / "catalog", name="memory", **options)

    with opened(exclusive=True) as archive:
        ingest([tmp_path / "src"], archive, workers=2)
        assert verify_archive(archive) == []
        rows = [row for row in archive.index.instances() if row.outcome == "transcoded"]
        index = archive.index.path
    deleted, damaged, moved = rows[0], rows[1], rows[2]
    with opened() as archive:
        with archive.local(damaged.path) as path:
            data = bytearray(path.read_bytes())
        data[-20] ^= 0xFF
        if backend == "folder":
            archive.layout.resolve(deleted.path).unlink()  # type: ignore[attr-defined]
            archive.layout.resolve(damaged.path).write_bytes(data)  # type: ignore[attr-defined]
            (tmp_path / "a" / "objects" / "stray.dcm").write_bytes(b"x")
        else:
            store.delete(deleted.path)
            store.put(damaged.path, bytes(data))
            store.put("objects/stray.dcm", b"x")
    shift_first_frame(index, moved.sop_uid)
    with opened(read_only=True, check=False) as archive:
        problems = {p.path: p.what for p in verify_archive(archive)}
    assert "missing" in problems.pop(deleted.path)
    assert "digest" in problems.pop(damaged.path)
    assert "frame map disagrees" in problems.pop(moved.path)
    assert "not in the index" in problems.pop("objects/stray.dcm")
    assert problems == {}


def shift_first_frame(index: Path, sop: str) -> None:
    """Move the first frame's recorded offset by two bytes (an index whose
    frame map disagrees with its object), as a damaged catalog would."""
    db = sqlite3.connect(index)
    with db:
        db.execute("UPDATE frames SET offset = offset + 2 WHERE sop_uid = ? AND number = 0", (sop,))
    db.close()


def test_verify_an_s3_archive(tmp_path: Path, s3_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`transcode verify --archive s3://... --catalog DIR`: clean, then a
    deleted object, an overwritten one and a moved frame row are reported;
    `--rebuild-index` is refused for a store."""
    make_study(tmp_path / "src")
    catalog = str(tmp_path / "catalog")
    main(["ingest", str(tmp_path / "src"), "--archive", s3_url, "--catalog", catalog, "--workers", "2"])
    assert main(["verify", "--archive", s3_url, "--catalog", catalog]) == EXIT_OK
    with open_archive(s3_url, catalog=catalog, read_only=True) as archive:
        rows = [row for row in archive.index.instances() if row.outcome == "transcoded"]
    bucket = S3Store.from_url(s3_url)
    bucket.delete(rows[0].path)
    data = bytearray(bucket.get(rows[1].path))
    data[len(data) // 2] ^= 0x01
    bucket.put(rows[1].path, bytes(data))
    shift_first_frame(tmp_path / "catalog" / "index.sqlite", rows[2].sop_uid)
    capsys.readouterr()
    assert main(["verify", "--archive", s3_url, "--catalog", catalog]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert f"{rows[0].path}: missing" in out and f"{rows[1].path}: object digest" in out
    assert f"{rows[2].path}: frame 0: the bytes at its recorded offset" in out
    assert "3 problem(s)" in out
    assert main(["verify", "--archive", s3_url, "--catalog", catalog, "--rebuild-index"]) == EXIT_USAGE


def test_stow_into_s3_then_search_and_retrieve(tmp_path: Path, s3_url: str) -> None:
    """STOW-RS into an S3 archive: the instances are searchable, the
    retrieved objects are the bucket's, their frames decode to the pixels
    sent; the upload spool is in the catalog folder and left empty."""
    expected = make_study(tmp_path / "src")
    sent = [tmp_path / "src" / name for name, outcome in expected.items()
            if outcome in ("transcoded", "kept") and not name.startswith("zz/")]
    catalog = tmp_path / "catalog"
    with open_archive(s3_url, catalog=catalog) as archive, TestClient(create_app(archive, stow_workers=1)) as client:
        response = client.post("/dicomweb/studies", content=body(*(p.read_bytes() for p in sent)),
                               headers={"Content-Type": CONTENT_TYPE})
        assert response.status_code == 200, response.text
        found = client.get("/dicomweb/instances").json()
        assert len(found) == len(sent)
        rows = {row.sop_uid: row for row in archive.index.instances()}
        bucket = S3Store.from_url(s3_url)
        assert set(bucket.list("objects/")) == {row.path for row in rows.values()}
        for path in sent:
            source = pydicom.dcmread(path)
            row = rows[source.SOPInstanceUID]
            status, _, (whole,) = answer(client, instance_url(row), 'multipart/related; type="application/dicom"')
            assert status == 200 and whole == bucket.get(row.path)
            if row.outcome != "transcoded":
                continue
            pixels = source.pixel_array.reshape(row.frames, source.Rows, source.Columns)
            for number in range(1, row.frames + 1):
                status, _, (frame,) = answer(client, f"{instance_url(row)}/frames/{number}", OHIF)
                assert status == 200 and np.array_equal(htj2k.decode(frame), pixels[number - 1])
        assert not any((catalog / "spool" / "uploads").iterdir())


@pytest.fixture(params=["folder", "postgresql"])
def catalog_address(request: pytest.FixtureRequest, tmp_path: Path, s3_url: str) -> ArchiveAddress:
    """The S3 archive with its catalog in a folder, or in a real PostgreSQL
    (its node's working folder then apart, `--work-dir`)."""
    if request.param == "folder":
        return ArchiveAddress(s3_url, str(tmp_path / "catalog"))
    return ArchiveAddress(s3_url, request.getfixturevalue("postgres").create_database(), work_dir=str(tmp_path / "work"))


def _options(address: ArchiveAddress) -> list[str]:
    """The command-line options naming `address`'s archive."""
    assert address.catalog is not None
    return ["--archive", address.url, "--catalog", address.catalog,
            *(["--work-dir", address.work_dir] if address.work_dir else [])]


def test_storescu_into_an_s3_archive(tmp_path: Path, catalog_address: ArchiveAddress) -> None:
    """`listen` into an S3 archive: dcmtk's storescu sends pydicom's files,
    each is answered once in the bucket and indexed; the spool (in the
    node's local folder) is left empty; `verify` finds the archive whole."""
    storescu = dcmtk("storescu")
    files = [relabel(PYDICOM_FILES / name, tmp_path / name) for name in ("CT_small.dcm", "MR_small_implicit.dcm")]
    receiver = Receiver(catalog_address, port=free_port(), workers=1, study_idle=1.0)
    receiver.start()
    try:
        done = subprocess.run([storescu, "-aec", "TRANSCODE", "127.0.0.1", str(receiver.address[1]),
                               *map(str, files)], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "Store Failed" not in done.stderr, done.stderr
    finally:
        receiver.stop()
    with catalog_address.open(read_only=True) as archive:
        rows = {row.sop_uid: row for row in archive.index.instances()}
        assert set(rows) == {sop_uid(path) for path in files}
        assert {row.outcome for row in rows.values()} == {"transcoded"}
        assert set(S3Store.from_url(catalog_address.url).list("objects/")) == {row.path for row in rows.values()}
    assert not any((catalog_address.local / "spool" / "incoming").iterdir())
    assert main(["verify", *_options(catalog_address)]) == EXIT_OK


def test_migrate_into_an_s3_archive(pacs: tuple, tmp_path: Path, catalog_address: ArchiveAddress) -> None:  # noqa: F811
    """`transcode migrate --archive s3://... --catalog DIR|postgresql://...`
    from Orthanc: every study done, every instance in the bucket and the
    index, the spool (in the node's local folder) left empty, `verify` clean."""
    peer, _, made = pacs
    assert main(["migrate", "--from", f"{peer.aet}@127.0.0.1:{peer.dicom_port}", *_options(catalog_address),
                 "--ae-title", AET, "--workers", "1"]) == EXIT_OK
    with catalog_address.open(read_only=True) as archive:
        rows = {row.sop_uid: row for row in archive.index.instances()}
    assert set(rows) == {sop_uid(path) for files in made.values() for path in files}
    assert set(S3Store.from_url(catalog_address.url).list("objects/")) == {row.path for row in rows.values()}
    assert not [p for p in (catalog_address.local / "spool" / "migrate").iterdir() if p.name != "lock"]
    assert main(["verify", *_options(catalog_address)]) == EXIT_OK


class CountingStore(MemoryStore):
    """A memory store that counts the bytes read from it (every read of an
    object's bytes comes as ranges; `get` also serves `size` here)."""

    read = 0

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        parts = super().get_ranges(key, ranges)
        self.read += sum(map(len, parts))
        return parts


def test_a_kept_frame_is_read_alone_from_a_store(tmp_path: Path) -> None:
    """A frame of a multi-frame instance kept as is (frames over the size
    cap here) is decoded from its own bytes: once the object was proved
    whole (the first request), a request reads a fraction of it, not a copy
    of all of it; every frame is the source's."""
    (tmp_path / "src").mkdir()
    source = write(Spec("MR", 512, 512, 8, seed=3), tmp_path / "src" / "mf.dcm")  # 4 MB
    store = CountingStore()
    with StoreArchive(store, tmp_path / "catalog", name="store", exclusive=True) as archive:
        ingest([tmp_path / "src"], archive, settings=EncodeSettings(max_frame_bytes=1024))
    expected = pydicom.dcmread(source).pixel_array
    with StoreArchive(store, tmp_path / "catalog", name="store") as archive:
        (row,) = archive.index.instances()
        assert (row.outcome, row.reason) == ("kept", "frame_too_large")
        client = TestClient(create_app(archive))
        for number in (1, 8, 5):
            store.read = 0
            response = client.get(instance_url(row) + f"/frames/{number}", headers={"Accept": NATIVE})
            ((_, payload),) = multipart_parts(response.headers["content-type"], response.content)
            assert payload == expected[number - 1].astype("<u2").tobytes()
        assert 0 < store.read < row.size / 2
