"""The catalog conformance suite (tests/catalog_conformance.py) for each
backend: SQLite in a temporary folder, PostgreSQL from tests/postgres.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.catalog_conformance import CatalogTests
from tests.postgres import Postgres
from transcode.catalog import open_catalog


class TestSQLiteCatalog(CatalogTests):
    @pytest.fixture
    def where(self, tmp_path: Path) -> str:
        return str(tmp_path)


class TestPostgresCatalog(CatalogTests):
    @pytest.fixture
    def where(self, postgres: Postgres) -> str:
        return postgres.create_database()


def test_an_unreachable_postgres_catalog_is_a_sentence_without_the_password() -> None:
    pytest.importorskip("psycopg")
    from tests.peers import free_port
    from transcode.catalog.base import CatalogError

    url = f"postgres://reader:s3cret@127.0.0.1:{free_port()}/archive"  # nothing listens there
    with pytest.raises(CatalogError) as caught:
        open_catalog(url)
    message = str(caught.value)
    assert "s3cret" not in message and "reader@127.0.0.1" in message and "\n" not in message


def test_a_killed_writer_leaves_no_postgres_lock(postgres: Postgres) -> None:
    """The advisory lock is the writer's session's: a writer killed with
    SIGKILL (no `close`) holds it no longer once the server sees the
    connection gone."""
    from transcode.catalog.base import ArchiveBusy

    database = postgres.create_database()
    script = (f"import time\nfrom transcode.catalog import open_catalog\nc = open_catalog({database!r})\nc.lock()\n"
              "print('locked', flush=True)\ntime.sleep(600)")
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
        with open_catalog(database) as other:
            with pytest.raises(ArchiveBusy):
                other.lock()
            writer.send_signal(signal.SIGKILL)
            writer.wait(30)
            deadline = time.monotonic() + 10
            while True:  # the server ends the session when it reads the closed socket
                try:
                    other.lock()
                    break
                except ArchiveBusy:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
    finally:
        writer.kill()
        writer.wait()
