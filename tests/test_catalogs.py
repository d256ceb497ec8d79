"""The catalog conformance suite (tests/catalog_conformance.py) for each
backend: SQLite in a temporary folder, PostgreSQL from tests/postgres.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.catalog_conformance import CatalogTests
from tests.postgres import Postgres
from transcode.catalog import open_catalog
from transcode.catalog.base import Catalog


def _opened(where: str | Path) -> Iterator[Catalog]:
    catalog = open_catalog(where)
    catalog.create()
    yield catalog
    catalog.close()


class TestSQLiteCatalog(CatalogTests):
    @pytest.fixture
    def catalog(self, tmp_path: Path) -> Iterator[Catalog]:
        yield from _opened(tmp_path)

    @pytest.fixture
    def open_again(self, tmp_path: Path) -> Callable[[], Catalog]:
        return lambda: open_catalog(tmp_path)


class TestPostgresCatalog(CatalogTests):
    @pytest.fixture
    def database(self, postgres: Postgres) -> str:
        return postgres.create_database()

    @pytest.fixture
    def catalog(self, database: str) -> Iterator[Catalog]:
        yield from _opened(database)

    @pytest.fixture
    def open_again(self, database: str) -> Callable[[], Catalog]:
        return lambda: open_catalog(database)


def test_an_unreachable_postgres_catalog_is_a_sentence_without_the_password() -> None:
    pytest.importorskip("psycopg")
    from tests.peers import free_port
    from transcode.catalog.base import CatalogError

    url = f"postgres://reader:s3cret@127.0.0.1:{free_port()}/archive"  # nothing listens there
    with pytest.raises(CatalogError) as caught:
        open_catalog(url)
    message = str(caught.value)
    assert "s3cret" not in message and "reader@127.0.0.1" in message and "\n" not in message
