"""An S3 archive with its catalog in PostgreSQL, end to end: `transcode
ingest --archive s3://... --catalog postgresql://...` of a mixed study into
a real SeaweedFS and a real PostgreSQL, then `transcode serve` with the same
options answers QIDO-RS, metadata and frames exactly as a folder archive of
the same files does; a rerun places nothing (the ledger is in PostgreSQL);
a fresh database over that store is refused; a second writer is refused."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests

from tests import seaweed
from tests.postgres import Postgres
from tests.served import multipart_parts, serve_command
from tests.test_ingest import make_study
from transcode.archive import ArchiveBusy, ArchiveMismatch
from transcode.archive.objects import open_archive
from transcode.cli import EXIT_FAILED, EXIT_USAGE, main
from transcode.security.audit import records
from transcode.stores.s3 import S3Store

OHIF = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def answers(base: str, study: str, sops: list[tuple[str, str, str]]) -> dict[str, object]:
    """What a server says about the study: QIDO at each level, the study's
    metadata, and every instance's frames (bytes), with its own address
    taken out of the URLs it returns."""
    out: dict[str, object] = {}
    for path in ("/studies", "/studies?PatientName=*&includefield=all", f"/studies/{study}/series",
                 f"/studies/{study}/instances?includefield=all", "/instances?Modality=CT&limit=2&offset=1",
                 f"/studies/{study}/metadata"):
        response = requests.get(base + path, timeout=30)
        assert response.status_code == 200, (path, response.text)
        out[path] = response.text.replace(base, "BASE")
    for study_uid, series, sop in sops:
        response = requests.get(f"{base}/studies/{study_uid}/series/{series}/instances/{sop}/frames/1",
                                headers={"Accept": OHIF}, timeout=30)
        assert response.status_code == 200, response.text
        out[sop] = [payload for _, payload in multipart_parts(response.headers["content-type"], response.content)]
    return out


def test_s3_archive_with_a_postgres_catalog(tmp_path: Path, s3_server: seaweed.Seaweed, postgres: Postgres,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    make_study(tmp_path / "src")
    url = f"s3://{s3_server.bucket}/archive-{uuid.uuid4().hex[:8]}"
    catalog = postgres.create_database()
    options = ["--catalog", catalog, "--work-dir", str(tmp_path / "staging")]
    # The same files into a folder archive and into S3 + PostgreSQL (broken files and a conflict: exit 1).
    assert main(["ingest", str(tmp_path / "src"), "--archive", str(tmp_path / "folder"), "--workers", "2"]) \
        == EXIT_FAILED
    assert main(["ingest", str(tmp_path / "src"), "--archive", url, *options, "--workers", "2"]) == EXIT_FAILED
    with open_archive(url, catalog=catalog, read_only=True) as archive:
        rows = list(archive.index.instances())
        counts = archive.index.counts()
        identity = archive.identity
    bucket = S3Store.from_url(url)
    assert sorted(bucket.list("objects/")) == sorted(row.path for row in rows)
    assert counts["conflicts"] == len(list(bucket.list("conflicts/"))) == 1

    sops = [(r.study_uid, r.series_uid, r.sop_uid) for r in rows if r.outcome == "transcoded"]
    study = rows[0].study_uid
    with serve_command(tmp_path / "folder", "--log-level", "warning") as base:
        expected = answers(base, study, sops)
    with serve_command(url, *options, "--log-level", "warning") as base:  # type: ignore[arg-type]
        assert answers(base, study, sops) == expected
    # The audit trail (in the node's working folder) names each retrieved instance's patient, from PostgreSQL.
    patients = {(t["instance"], t["patient"]) for _, _, line in records(tmp_path / "staging" / "audit")
                for t in line["touched"] if "instance" in t}  # type: ignore[index]
    with open_archive(tmp_path / "folder", read_only=True) as folder:
        assert patients == {(sop, folder.index.patient_id(study_uid)) for study_uid, _, sop in sops}
        assert None not in {patient for _, patient in patients}

    # A rerun places nothing: every file is in the PostgreSQL ledger (the broken ones are tried again).
    assert main(["ingest", str(tmp_path / "src"), "--archive", url, *options]) == EXIT_FAILED
    with open_archive(url, catalog=catalog, read_only=True) as archive:
        again = archive.index.counts()
        assert archive.identity == identity  # no write session placed an object
    assert {k: v for k, v in again.items() if k != "ledger"} == {k: v for k, v in counts.items() if k != "ledger"}

    # A fresh database over a store with objects is not this archive's catalog.
    fresh = postgres.create_database()
    with pytest.raises(ArchiveMismatch):
        open_archive(url, catalog=fresh, work_dir=tmp_path / "staging2", exclusive=True)
    assert main(["ingest", str(tmp_path / "src"), "--archive", url, "--catalog", fresh]) == EXIT_USAGE

    # One writer at a time, as with a folder's lock.
    with open_archive(url, catalog=catalog, work_dir=tmp_path / "staging", exclusive=True), \
            pytest.raises(ArchiveBusy):
        open_archive(url, catalog=catalog, work_dir=tmp_path / "staging3", exclusive=True)


def test_a_catalog_gone_answers_503(tmp_path: Path, postgres: Postgres) -> None:
    """The server's reads fail cleanly when the database goes away: a
    Problem naming no host, no traceback; the log says why."""
    import psycopg
    from fastapi.testclient import TestClient

    from transcode.archive.objects import StoreArchive
    from transcode.server import create_app
    from transcode.stores import MemoryStore

    catalog = postgres.create_database()
    store = MemoryStore()
    StoreArchive(store, catalog, name="memory://", exclusive=True, work_dir=tmp_path / "staging").close()
    archive = StoreArchive(store, catalog, name="memory://", read_only=True)
    try:
        client = TestClient(create_app(archive), raise_server_exceptions=False)
        assert client.get("/dicomweb/studies").json() == []
        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {catalog.rsplit('/', 1)[1]} WITH (FORCE)")
        response = client.get("/dicomweb/studies")
        assert response.status_code == 503
        assert response.json()["error"] == "catalog_unavailable"
        assert "127.0.0.1" not in response.text and "Traceback" not in response.text
    finally:
        archive.close()

