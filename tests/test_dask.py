"""`ingest` on a Dask cluster (`cluster.DaskPool`): a `distributed.LocalCluster`
of two worker processes on loopback, shared by the module's tests. The
same study as the local process pool, the same outcomes and the same
object bytes; a rerun does nothing; workers that die mid-run cost their
file at most, and the archive verifies."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import seaweed
from tests.test_ingest import crash_on_poison, make_study, six_and_poison
from transcode.archive import FolderArchive
from transcode.archive.check import verify_archive
from transcode.archive.objects import STAGED, _staging_store, open_archive
from transcode.cli import EXIT_FAILED, EXIT_USAGE, main
from transcode.entries import Entry
from transcode.pipeline import ingest, work
from transcode.stores.s3 import S3Store

pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

from transcode.cluster import DaskPool  # after the skip: distributed is optional


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskPool]:
    # A task is given up after it killed two workers (Dask's default: four).
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        pool = DaskPool("local:2")
    yield pool
    pool.close()


def objects(archive: FolderArchive) -> dict[str, tuple[str, str, bytes]]:
    """SOP UID -> outcome, path and the object's bytes, for every instance."""
    return {row.sop_uid: (row.outcome, row.path, archive.read(row.path)) for row in archive.index.instances()}


def forgotten(cluster: DaskPool) -> bool:
    """Whether the scheduler holds no task, within 5 s (a release travels
    through the client's event loop). A key still held after its files
    settled is recomputed when its worker dies: its files staged again,
    with nobody to place or remove them."""
    deadline = time.monotonic() + 5
    while cluster._client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def relative(root: Path, entries: list[Entry]) -> dict[str, tuple[str, str | None]]:
    return {str(Path(e.source_path).relative_to(root)): (e.outcome, e.reason) for e in entries}


def test_same_outcomes_and_objects_as_the_local_pool_and_a_rerun_does_nothing(
        tmp_path: Path, cluster: DaskPool) -> None:
    src = tmp_path / "src"
    expected = make_study(src)
    assert cluster.workers == 2
    with FolderArchive(tmp_path / "local", exclusive=True) as local, \
            FolderArchive(tmp_path / "dask", exclusive=True) as remote:
        by_pool = ingest([src], local, workers=2)
        progress: list[tuple[int, int]] = []
        by_dask = ingest([src], remote, pool=cluster, progress=lambda report, done, total: progress.append(
            (done, total)))
        assert {name: outcome for name, (outcome, _) in relative(src, by_dask.entries).items()} == expected
        assert relative(src, by_dask.entries) == relative(src, by_pool.entries)
        assert by_dask.counts() == by_pool.counts()
        assert progress[0] == (0, len(expected)) and progress[-1] == (len(expected), len(expected))
        assert objects(remote) == objects(local)  # the same paths, the same bytes
        assert remote.index.counts() == local.index.counts()
        assert verify_archive(remote) == []
        assert forgotten(cluster)

        again = ingest([src], remote, pool=cluster)
        assert {Path(e.source_path).name for e in again.entries} == {"notes.txt", "truncated.dcm"}  # failed: retried
        assert again.skipped == len(expected) - 2
        assert objects(remote) == objects(local)


def poison_once(source: str, *args: object) -> Entry:
    """Kills its worker process the first time it meets a file named
    poison* (a marker beside the file remembers), then works normally:
    a worker lost mid-run, with other files in flight on the other one."""
    marker = Path(f"{source}.killed")
    if Path(source).name.startswith("poison") and not marker.exists():
        marker.touch()
        os._exit(137)
    return work(source, *args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("worker", "poisoned"), [
    (poison_once, ("transcoded", None)),  # a worker lost mid-run, once: the file runs again elsewhere
    (crash_on_poison, ("failed", "worker_crashed")),  # every try kills its worker: that file fails, alone
], ids=["killed-once", "kills-every-worker"])
def test_dying_workers_cost_at_most_their_file(tmp_path: Path, cluster: DaskPool, worker: object,
                                               poisoned: tuple[str, str | None]) -> None:
    src = tmp_path / "src"
    six_and_poison(src)
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([src], archive, pool=cluster, worker=worker)
        outcomes = relative(src, report.entries)
        assert outcomes.pop("poison.dcm") == poisoned
        assert outcomes == {f"{n}.dcm": ("transcoded", None) for n in range(6)}  # files in flight beside it too
        assert verify_archive(archive) == []
        assert forgotten(cluster)
    if worker is poison_once:
        assert (src / "poison.dcm.killed").exists()  # it did kill a worker


def test_workers_start_without_dasks_malloc_trim_threshold(cluster: DaskPool) -> None:
    """Dask starts its worker processes with MALLOC_TRIM_THRESHOLD_=65536,
    under which every frame buffer faulted its pages in anew: about 5 ms
    more per 512x512 CT file (`cluster.LOCAL_CONFIG`). local:N unsets it."""
    assert cluster.get().submit(os.getenv, "MALLOC_TRIM_THRESHOLD_").result() is None  # read on a worker


def test_cli_dask_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(tmp_path), "--archive", str(tmp_path / "a"), "--dask", "local:0"]) == EXIT_USAGE
    assert main(["ingest", str(tmp_path), "--archive", str(tmp_path / "a"), "--dask", "nowhere"]) == EXIT_USAGE
    assert "local:N" in capsys.readouterr().err


@pytest.mark.slow  # SeaweedFS takes about 30 s to start and stop
@pytest.mark.parametrize("kind", ["folder", "postgresql"])
def test_cli_ingest_into_s3_on_a_local_cluster(tmp_path: Path, s3_server: seaweed.Seaweed, kind: str,
                                               request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`ingest --archive s3://... --catalog DIR|postgresql://... --dask
    local:1`: the objects in the bucket, the index in the catalog, a rerun
    skips every done file (the ledger in the catalog)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    expected = make_study(tmp_path / "src")
    url = f"s3://{s3_server.bucket}/dask-{uuid.uuid4().hex[:8]}"
    catalog = str(tmp_path / "catalog") if kind == "folder" else request.getfixturevalue("postgres").create_database()
    command = ["ingest", str(tmp_path / "src"), "--archive", url, "--catalog", catalog,
               "--work-dir", str(tmp_path / "staging"), "--dask", "local:1"]
    assert main(command) == EXIT_FAILED  # the study holds broken files and a conflict
    with open_archive(url, catalog=catalog, read_only=True) as archive:
        rows = list(archive.index.instances())
        assert len(rows) == sum(outcome in ("transcoded", "kept") for outcome in expected.values())
        assert all(archive.size(row.path) == row.size for row in rows)
    capsys.readouterr()
    assert main(command) == EXIT_FAILED  # the two broken files, tried again
    assert f"{len(expected) - 2} already done in an earlier run" in capsys.readouterr().out
    with open_archive(url, catalog=catalog, read_only=True) as archive:
        assert archive.index.counts()["instances"] == len(rows)


def staged_in_the_store(source: str, *args: object) -> Entry:
    """`work`, checked on the worker: what it staged is a key under
    `staging/` in the bucket (put by the worker itself), not a local file."""
    entry = work(source, *args)  # type: ignore[arg-type]
    if entry.staged is not None:
        assert entry.staged.path.startswith(STAGED) and not Path(entry.staged.path).is_absolute(), entry.staged.path
        assert _staging_store(str(args[0]).partition(f"/{STAGED}")[0]).exists(entry.staged.path)
    return entry


@pytest.mark.slow  # SeaweedFS and a cluster of its own take about 30 s to start and stop
def test_workers_put_into_s3_and_the_coordinator_moves_them(tmp_path: Path, s3_server: seaweed.Seaweed,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Into an S3 archive, each task puts its object under `staging/`; the
    coordinator moves it to its object key server-side (duplicates are
    deleted there): the same outcomes and object bytes as the local pool
    into a folder, and nothing left under `staging/`, where the write
    session first cleared what a killed run had left."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)  # before the cluster starts: its workers inherit them
    src = tmp_path / "src"
    expected = make_study(src)
    url = f"s3://{s3_server.bucket}/direct-{uuid.uuid4().hex[:8]}"
    S3Store.from_url(url).put(f"{STAGED}run-killed/half.dcm", b"DICM")  # a killed run's upload
    pool = DaskPool("local:2")
    try:
        with FolderArchive(tmp_path / "folder", exclusive=True) as folder, \
                open_archive(url, catalog=tmp_path / "catalog", exclusive=True) as bucket:
            by_pool = ingest([src], folder, workers=2)
            by_dask = ingest([src], bucket, pool=pool, worker=staged_in_the_store)
            assert {name: outcome for name, (outcome, _) in relative(src, by_dask.entries).items()} == expected
            assert relative(src, by_dask.entries) == relative(src, by_pool.entries)
            assert objects(bucket) == objects(folder)  # type: ignore[arg-type]
            assert bucket.index.counts() == folder.index.counts()
            assert list(bucket.store.list(STAGED)) == []  # type: ignore[attr-defined]
    finally:
        pool.close()
