"""The PostgreSQL catalog, through psycopg 3.

The same schema as SQLite's in PostgreSQL types (BIGINT sizes and times in
nanoseconds, DOUBLE PRECISION seconds, a `seq` column for arrival order,
DICOM JSON as TEXT so it comes back byte for byte). The writer's connection
is in autocommit mode outside `_transaction`, so a batch of records is one
transaction, as in SQLite. The server's threads read through a small
connection pool.

The writer lock is `pg_try_advisory_lock` on a dedicated session: another
writer gets ArchiveBusy, as with a folder's flock, and the lock goes when
that session ends (`close`, or the server noticing the process died).
Advisory locks are scoped to the database, which holds one archive's
catalog, so the key is a constant.

Connection and query failures become CatalogError with a sentence naming
the catalog without its password; the URL takes libpq's environment
(PGPASSWORD, PGSSLMODE, ...) for what it leaves out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool

from transcode.catalog.base import SCHEMA, ArchiveBusy, Catalog, CatalogError
from transcode.catalog.dialect import POSTGRES

log = logging.getLogger(__name__)

_SCHEMA = SCHEMA.format(int="BIGINT", real="DOUBLE PRECISION", serial="BIGSERIAL PRIMARY KEY",
                        arrival="\n    seq BIGSERIAL NOT NULL,")
#: pg_try_advisory_lock's key for the archive's writer (any 64-bit constant:
#: the lock is per database).
WRITER_LOCK = 0x7472616E73636F64  # "transcod"
#: Seconds a server thread waits for a pooled connection before the request
#: fails (503): a catalog that is down answers soon, not after 30 s.
POOL_WAIT = 5.0


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host, query=""))


class PostgresCatalog(Catalog):
    """The catalog in the PostgreSQL database at `url`."""

    dialect = POSTGRES

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.name = redact(url)
        self._url = url
        self._pool: ConnectionPool | None = None
        self._lock_session: psycopg.Connection[Any] | None = None
        self.db = self._connect()
        if read_only:
            self.db.execute("SET default_transaction_read_only = on")

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, autocommit=True)
        except psycopg.Error as exc:
            raise CatalogError(f"cannot connect to the catalog {self.name}: {_sentence(exc)}") from None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise CatalogError(f"the catalog {self.name} failed: {_sentence(exc)}") from exc

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._errors():
            cursor = self.db.execute(self.dialect.sql(sql), args)
            return cursor.fetchall() if cursor.description else []

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._errors(), self.db.cursor() as cursor:
            cursor.executemany(self.dialect.sql(sql), list(rows))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._errors(), self.db.transaction():
            yield

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._pool is None:
            self._pool = ConnectionPool(self._url, min_size=1, max_size=8, open=True, name="catalog",
                                        kwargs={"autocommit": True}, timeout=POOL_WAIT)
        with self._errors(), self._pool.connection() as db:  # PoolTimeout is a psycopg.Error too
            return db.execute(self.dialect.sql(sql), args).fetchall()

    def _has(self, table: str) -> bool:
        return self._rows("SELECT to_regclass(?::text) IS NOT NULL", (table,))[0][0]

    def create(self) -> None:
        with self._errors():
            self.db.execute(_SCHEMA)

    def lock(self) -> None:
        session = self._connect()
        if not session.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK,)).fetchone()[0]:  # type: ignore[index]
            session.close()
            raise ArchiveBusy(f"another ingest holds the writer lock of {self.name}")
        self._lock_session = session

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self.db.close()
        if self._lock_session is not None:
            try:  # released before this returns (a session's end is noticed by the server a little later)
                self._lock_session.execute("SELECT pg_advisory_unlock(%s)", (WRITER_LOCK,))
            except psycopg.Error as exc:  # the session is gone already, and with it the lock
                log.info("the catalog's writer session ended before its lock was released: %s", _sentence(exc))
            finally:
                self._lock_session.close()
                self._lock_session = None


def _sentence(exc: psycopg.Error) -> str:
    """The first line of the server's or libpq's message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
