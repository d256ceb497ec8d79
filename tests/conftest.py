"""Shared test data: pydicom's bundled files, the team corpus, generated fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pydicom
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the `fixtures` generator lives beside the package

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CORPUS = Path(os.environ.get("TRANSCODE_CORPUS", ROOT.parent / "shared" / "corpus")) / "pydicom-data"


def pydicom_files() -> list[Path]:
    """pydicom's own test files (the DICOMDIR sample tree is for ingest)."""
    return sorted(PYDICOM_FILES.glob("*.dcm"))


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file()) if CORPUS.is_dir() else []


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS} (set TRANSCODE_CORPUS)")
    return CORPUS


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory):  # -> tests.served.Served
    """An archive of two studies, built once for all server tests."""
    from tests.served import build

    return build(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def counting_archive(served):  # -> tests.served.CountingArchive
    """The served archive, recording the byte ranges each read asks for."""
    from tests.served import CountingArchive

    with CountingArchive(served.root) as archive:
        archive.calls = []
        yield archive


@pytest.fixture(scope="module")
def counting_client(counting_archive):  # -> fastapi.testclient.TestClient
    """An in-process client of the app over `counting_archive`."""
    from fastapi.testclient import TestClient

    from transcode.server import create_app

    return TestClient(create_app(counting_archive))


@pytest.fixture(scope="session")
def postgres():  # -> tests.postgres.Postgres
    """A PostgreSQL server for the session (skips where it is not installed)."""
    from tests.postgres import start

    yield from start()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):  # -> Iterator[tests.seaweed.Seaweed]
    """A real S3 server (SeaweedFS) for the whole session: tests keep apart
    by key prefix. Skips where `weed` is absent or does not start."""
    from tests import seaweed

    yield from seaweed.start(tmp_path_factory.mktemp("seaweed"))
