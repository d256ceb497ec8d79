"""Damaged copies of pydicom's test files (`fixtures/damage.py`: bytes
flipped, runs zeroed, files cut, lengths and VR codes changed), through
`ingest`, every route of the server for each instance archived, and
STOW-RS: each file ends with a reason that blames the file, never the
product, and no request ends in an internal error other than the
documented refusals of stored data that does not decode. Seeded: a failure
names the damage, and the same seed makes the same file again.

Fuzzing of this kind, by hand, found the defects these guard against: a
header value with no DICOM JSON form (a DS of "166.3õ0003") kept the
instance as `transcode_error`; a VR code that is no VR in the Image Pixel
module or a UID failed the file as `internal_error`; such a UID in a STOW
part the structure walk cannot read made the request a 500."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fixtures.damage import damaged
from tests.conftest import PYDICOM_FILES
from tests.test_server_stow import CONTENT_TYPE, body
from transcode.archive import FolderArchive
from transcode.archive.check import verify_archive
from transcode.pipeline import ingest
from transcode.server import create_app

SEED, COUNT = 20261208, 240
#: Reasons that say the product, not the file, is at fault.
BUGS = {"transcode_error", "internal_error", "worker_crashed"}
#: 5xx answers that are documented refusals of what is stored (README: the errors table).
REFUSALS = {"cannot_decode", "one_bit_frames", "unsupported_transfer_syntax"}
STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DECODED = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
AS_EXPLICIT_LE = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A folder of COUNT damaged files, and for each file name what was done to which file."""
    rng = random.Random(SEED)
    originals = sorted(p for p in PYDICOM_FILES.glob("*.dcm") if p.stat().st_size < 2_000_000)
    folder = tmp_path_factory.mktemp("damaged")
    made = {}
    for n in range(COUNT):
        original = rng.choice(originals)
        what, data = damaged(original.read_bytes(), rng)
        name = f"{n:03d}-{original.stem}.dcm"
        (folder / name).write_bytes(data)
        made[name] = f"{original.name}: {what}"
    return folder, made


@pytest.fixture(scope="module")
def ingested(sources: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory):
    with FolderArchive(tmp_path_factory.mktemp("archive") / "archive", exclusive=True) as archive:
        yield archive, ingest([sources[0]], archive, workers=2)


def test_every_damaged_file_ends_with_a_reason_that_blames_the_file(sources, ingested) -> None:
    archive, report = ingested
    made = sources[1]
    names = {Path(e.source_path).name: e for e in report.entries}
    assert len(names) == COUNT
    bugs = [(name, made[name], e.reason, e.detail) for name, e in names.items() if e.reason in BUGS]
    assert bugs == []
    assert {e.outcome for e in names.values()} >= {"transcoded", "kept", "failed"}  # the damage varies
    assert verify_archive(archive) == []


def test_every_archived_instance_is_served_or_refused_with_a_reason(ingested) -> None:
    archive, _ = ingested
    client = TestClient(create_app(archive), raise_server_exceptions=False)
    rows = list(archive.index.instances())
    assert len(rows) > 20
    failures = []
    for row in rows:
        url = f"/dicomweb/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"
        requests = [(url + "/metadata", None), (url, AS_EXPLICIT_LE), (url, STORED)]
        if row.frames:
            requests += [(url + "/frames/1", STORED), (url + "/frames/1", DECODED), (url + "/rendered", "image/png"),
                         (url + "/thumbnail", "image/jpeg")]
        for path, accept in requests:
            r = client.get(path, headers={"Accept": accept} if accept else {})
            if r.status_code >= 500 and r.json().get("error") not in REFUSALS:
                failures.append((row.path, row.reason, path.removeprefix(url), r.status_code, r.text[:200]))
    for level in ("studies", "series", "instances"):
        r = client.get(f"/dicomweb/{level}", params={"includefield": "all", "limit": "5000"})
        if r.status_code != 200:
            failures.append((level, r.status_code, r.text[:200]))
    assert failures == []


def test_stow_answers_every_damaged_part_without_an_internal_error(sources, tmp_path: Path) -> None:
    files = sorted(sources[0].iterdir())
    with FolderArchive(tmp_path / "archive") as archive, TestClient(create_app(archive, stow_workers=1)) as client:
        for start in range(0, len(files), 40):
            payload = body(*(f.read_bytes() for f in files[start:start + 40]))
            r = client.post("/dicomweb/studies", content=payload, headers={"Content-Type": CONTENT_TYPE})
            assert r.status_code in (200, 202, 409), (start, r.status_code, r.text[:300])
        assert verify_archive(archive) == []
