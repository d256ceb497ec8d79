"""The SQLite catalog: the embedded default, a file `index.sqlite`.

One writer connection, used by one process (the ingest's coordinator or the
server): WAL mode, each batch of source files committed in one transaction
after its objects are durably in place. synchronous=NORMAL: a commit
survives a killed process; a power cut may lose the last few commits, which
a rerun redoes (the objects they point at were fsynced first, so no row
ever points at a missing object, and the rerun is idempotent).

The server's threads read through one read-only connection each: WAL lets
them read while a writer (a STOW-RS request, or `transcode ingest` in
another process) writes, and every query sees the last committed state.
A read-only catalog (`read_only=True`: `transcode verify`, a read-only
archive) is opened through SQLite's `mode=ro`. The writer lock is an
flock on `.lock` beside the file, released when the process dies.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transcode.catalog.base import SCHEMA, ArchiveBusy, Catalog
from transcode.catalog.dialect import SQLITE

_SCHEMA = SCHEMA.format(int="INTEGER", real="REAL", serial="INTEGER PRIMARY KEY", arrival="")


def _connect(database: str | Path, **options: Any) -> sqlite3.Connection:
    """A connection with the function the catalog's searches use besides
    SQLite's own: `unicode_upper`, Python's upper-casing, since SQLite's
    upper() changes ASCII letters only ('Müller' would stay 'MüLLER' and
    never match a search for 'MÜLLER')."""
    db = sqlite3.connect(database, check_same_thread=False, **options)
    db.create_function("unicode_upper", 1, _upper, deterministic=True)
    return db


def _upper(text: str | None) -> str | None:
    return text.upper() if isinstance(text, str) else text


class SQLiteCatalog(Catalog):
    """The catalog in the SQLite file at `path` (FileNotFoundError for a
    reader where there is none)."""

    dialect = SQLITE

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.name = str(path)
        self._local = threading.local()
        self._lock_fd: int | None = None
        if read_only:
            if not path.is_file():  # nothing is created for a reader, not even an empty file
                raise FileNotFoundError(f"{path} does not exist")
            self.db = _connect(read_uri(path), uri=True, isolation_level=None)
            self.db.execute("PRAGMA query_only=ON")
        else:
            self.db = _connect(path, isolation_level=None)
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    def _stream(self, sql: str) -> Iterable[tuple[Any, ...]]:
        return self.db.execute(sql)  # a cursor: rows as SQLite steps through them

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self.db:  # BEGIN ... COMMIT, or ROLLBACK on error
            self.db.execute("BEGIN IMMEDIATE")
            yield

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = _connect(read_uri(self.path), uri=True)
            db.execute("PRAGMA query_only=ON")
            self._local.db = db
        return db.execute(sql, args).fetchall()

    def _has(self, table: str) -> bool:
        return bool(self._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)))

    def create(self) -> None:
        """Create what is missing of the schema (WAL mode, tables)."""
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        if "digest" not in {row[1] for row in self._rows("PRAGMA table_info(frames)")}:
            self.db.execute("ALTER TABLE frames ADD COLUMN digest TEXT")  # an index from before frame digests

    @functools.cache  # noqa: B019 - one catalog per archive, for its lifetime
    def _frame_digest(self) -> str:
        """`f.digest`, or NULL in an index from before frame digests left
        without the column (read-only): those frames' objects are proved whole."""
        return "f.digest" if "digest" in {row[1] for row in self._read("PRAGMA table_info(frames)")} else "NULL"

    def lock(self) -> None:
        self._lock_fd = take_lock(self.path.parent / ".lock")

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def take_lock(path: Path) -> int:
    """Hold the archive's writer lock (released when the returned descriptor
    is closed); ArchiveBusy when another process holds it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise ArchiveBusy(f"another ingest holds {path}") from exc
    return fd


def read_uri(path: Path) -> str:
    """The SQLite URI that opens the catalog at `path` read-only. In a folder
    this process cannot write (a read-only mount, another owner), SQLite
    cannot create the WAL index file a reader needs; the database is then
    opened as immutable: nobody can be writing it (and a -wal file left
    beside it by a writer that was killed is not read)."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    return uri if os.access(path.parent, os.W_OK) else f"{uri}&immutable=1"
