"""The server's read cache for object-store archives (transcode/server/cache.py):
bounded by bytes, keyed by object version, never a way around the integrity
check; through the frames route, a frame read from the store once; and an
instance replaced under a running server served as it now is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from fixtures.generate import Spec, write
from tests.served import multipart_parts
from transcode.archive import FolderArchive
from transcode.archive.objects import StoreArchive
from transcode.catalog.base import InstanceRow
from transcode.codecs import htj2k
from transcode.pipeline import ingest
from transcode.server import create_app, lookup
from transcode.server.cache import ReadCache
from transcode.server.errors import StoredDataError
from transcode.server.frames import FrameReader
from transcode.server.lookup import Lookup
from transcode.stores import MemoryStore
from transcode.stores.base import ByteRange

HTJ2K = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.202'


def test_bounded_by_bytes_least_recently_used_out_first() -> None:
    cache = ReadCache(100)
    cache.put(("a", "d", 0), b"a" * 40)
    cache.put(("b", "d", 0), b"b" * 40)
    assert cache.get(("a", "d", 0), 40) == b"a" * 40  # now the most recently used
    cache.put(("c", "d", 0), b"c" * 40)  # 120 bytes: the least recently used goes
    assert cache.get(("b", "d", 0), 1) is None
    assert cache.get(("a", "d", 0), 40) is not None and cache.get(("c", "d", 0), 40) is not None
    assert cache.size == 80
    cache.put(("big", "d", 0), b"x" * 101)  # more than the whole budget: not kept, nothing evicted for it
    assert cache.get(("big", "d", 0), 1) is None and cache.size == 80
    with pytest.raises(ValueError):
        ReadCache(0)


def test_the_longest_run_from_an_offset_serves_its_prefixes() -> None:
    cache = ReadCache(1000)
    key = ("objects/1/2/3.dcm", "blake3:ab", 120)
    cache.put(key, b"0123")
    assert cache.get(key, 4) == b"0123" and cache.get(key, 5) is None  # a longer request is a miss
    cache.put(key, b"0123456789")
    cache.put(key, b"01")  # shorter than what is kept: the longer run stays
    assert cache.get(key, 10) == b"0123456789" and cache.get(key, 2) == b"0123456789"
    assert cache.size == 10
    assert cache.get(("objects/1/2/3.dcm", "blake3:cd", 120), 2) is None  # another version of the object


class RemoteStore(MemoryStore):
    """A memory store that says it is remote (reads wait on a network, as
    S3's do), counting the ranged reads made of it."""

    remote = True
    reads = 0

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        self.reads += len(ranges)
        return super().get_ranges(key, ranges)


def frame_url(row: InstanceRow, number: int = 1, level: int | None = None) -> str:
    url = f"/dicomweb/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}/frames/{number}"
    return url if level is None else f"{url}?level={level}"


def payload(client: TestClient, url: str) -> bytes:
    response = client.get(url, headers={"Accept": HTJ2K})
    assert response.status_code == 200, response.text
    ((_, data),) = multipart_parts(response.headers["content-type"], response.content)
    return data


@pytest.fixture
def archived(tmp_path: Path) -> tuple[RemoteStore, Path]:
    """A 3-frame MR instance ingested into a remote (memory) store archive."""
    (tmp_path / "src").mkdir()
    write(Spec("MR", 256, 256, 3, 16, 12, seed=5), tmp_path / "src" / "mr.dcm")
    store = RemoteStore()
    with StoreArchive(store, tmp_path / "catalog", name="remote", exclusive=True) as archive:
        ingest([tmp_path / "src"], archive, workers=1)
    return store, tmp_path / "catalog"


def test_a_frame_is_read_from_the_store_once(archived: tuple[RemoteStore, Path], tmp_path: Path) -> None:
    """Asked again, a frame comes from the cache, the same bytes; a level
    prefix of a cached frame too; a longer read than the one kept goes to
    the store once more, then its prefixes are served from it."""
    store, catalog = archived
    source = tmp_path / "src" / "mr.dcm"
    with StoreArchive(store, catalog, name="remote", read_only=True) as archive:
        (row,) = archive.index.instances()
        client = TestClient(create_app(archive))
        store.reads = 0
        low = payload(client, frame_url(row, 2, level=1))
        assert store.reads == 1
        full = payload(client, frame_url(row, 2))  # longer than the run kept: read
        assert store.reads == 2
        assert payload(client, frame_url(row, 2)) == full and payload(client, frame_url(row, 2, level=1)) == low
        assert store.reads == 2
        assert (htj2k.decode(full) == pydicom.dcmread(source).pixel_array[1]).all()
        payload(client, frame_url(row, 3))
        assert store.reads == 3  # another frame: its own read
        for number, status in ((4, 404), (0, 400)):  # frames that do not exist: as from any archive
            assert client.get(frame_url(row, number), headers={"Accept": HTJ2K}).status_code == status
        assert client.get(frame_url(row, 2, level=9), headers={"Accept": HTJ2K}).status_code == 400


def test_no_cache_with_a_budget_of_zero(archived: tuple[RemoteStore, Path]) -> None:
    store, catalog = archived
    with StoreArchive(store, catalog, name="remote", read_only=True) as archive:
        (row,) = archive.index.instances()
        client = TestClient(create_app(archive, read_cache_mb=0))
        store.reads = 0
        for _ in range(3):
            payload(client, frame_url(row))
        assert store.reads == 3


def test_damaged_bytes_are_never_kept(archived: tuple[RemoteStore, Path]) -> None:
    """A damaged frame answers integrity_error and is not cached: once the
    object holds its bytes again, the frame is served, and then cached."""
    store, catalog = archived
    with StoreArchive(store, catalog, name="remote", read_only=True) as archive:
        (row,) = archive.index.instances()
        (frame, *_) = archive.index.frames(row.sop_uid)
        good = store.get(row.path)
        damaged = bytearray(good)
        damaged[frame.offset + frame.length // 2] ^= 0xFF
        store.put(row.path, bytes(damaged))  # bit rot behind the archive's back
        client = TestClient(create_app(archive))
        for _ in range(2):
            response = client.get(frame_url(row), headers={"Accept": HTJ2K})
            assert response.status_code == 500 and response.json()["error"] == "integrity_error"
        store.put(row.path, good)
        store.reads = 0
        first = payload(client, frame_url(row))
        assert payload(client, frame_url(row)) == first and store.reads == 1


def test_a_cached_run_is_checked_again_before_it_is_sent(archived: tuple[RemoteStore, Path]) -> None:
    """Bytes damaged in the cache itself (memory, a bug) are caught by the
    check every frame passes before it is sent, as bytes from the store are."""
    store, catalog = archived
    with StoreArchive(store, catalog, name="remote", read_only=True) as archive:
        (row,) = archive.index.instances()
        (frame, *_) = archive.index.frames(row.sop_uid)
        run = bytearray(store.get(row.path)[frame.offset:frame.offset + frame.length])
        run[len(run) // 2] ^= 0x01
        cache = ReadCache(1 << 20)
        cache.put((row.path, row.object_digest, frame.offset), bytes(run))
        reader = FrameReader(archive, cache)
        instance = Lookup(archive.index).instance(row.study_uid, row.series_uid, row.sop_uid)
        store.reads = 0
        with pytest.raises(StoredDataError, match="frame 1 does not match"):
            reader.stored(instance, 1)
        assert store.reads == 0  # it was the cached run that was checked


@pytest.mark.parametrize("backend", ["folder", "remote"])
def test_a_replaced_instance_is_served_as_it_now_is(tmp_path: Path, backend: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A running server asked for an instance that a re-send with
    `--on-conflict replace` changed since: once its cached lookup is older
    than `FRESH_SECONDS`, the new object's frames, not an integrity_error
    from reading them with the old frame map (a folder), nor the old
    version's bytes from the read cache (a remote store)."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    source = write(Spec("CT", 64, 64, 1, 16, 12, seed=1), tmp_path / "a" / "x.dcm")
    corrected = pydicom.dcmread(source)
    pixels = corrected.pixel_array.copy()
    pixels[0, 0] ^= 1
    corrected.PixelData = pixels.tobytes()
    corrected.save_as(tmp_path / "b" / "x.dcm")
    store = RemoteStore()

    def opened(**options: bool) -> FolderArchive | StoreArchive:
        if backend == "folder":
            return FolderArchive(tmp_path / "archive", **options)
        return StoreArchive(store, tmp_path / "catalog", name="remote", **options)

    with opened(exclusive=True) as archive:
        ingest([tmp_path / "a"], archive, workers=1)
    with opened(read_only=True) as served:
        (row,) = served.index.instances()
        client = TestClient(create_app(served))
        assert (htj2k.decode(payload(client, frame_url(row))) == pydicom.dcmread(source).pixel_array).all()
        with opened(exclusive=True) as archive:
            (entry,) = ingest([tmp_path / "b"], archive, workers=1, on_conflict="replace").entries
        assert entry.outcome == "replaced"
        monkeypatch.setattr(lookup, "FRESH_SECONDS", 0.0)
        assert (htj2k.decode(payload(client, frame_url(row))) == pixels).all()
