"""The SQLite index: studies, series, instances (DICOM JSON), frames, ledger.

Everything the server needs is here: a frame's byte offset and length inside
the stored object and its codestream index (resolution levels, tiles), so
serving never parses a file. The ledger records what became of every source
file, so a rerun skips what is done and a report can be rebuilt at any time.

One connection, used by one process (the ingest's coordinator or the
server): WAL mode, each source file committed in one transaction after its
object is durably in place. synchronous=NORMAL: a commit survives a killed
process; a power cut may lose the last few commits, which a rerun redoes
(the objects they point at were fsynced first, so no row ever points at a
missing object, and the rerun is idempotent).

Opening writes nothing: the schema is created (`create`) only once the
archive has checked that this index is its own (identity.py), so that an
emptied or foreign index is refused as it is, not turned into an empty one.
A read-only index (`read_only=True`, `transcode verify`, a read-only
archive) is opened through SQLite's `mode=ro`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transcode.archive.identity import Identity

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    dicom_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    dicom_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    size INTEGER NOT NULL,
    object_digest TEXT NOT NULL,
    pixel_digest TEXT,
    frames INTEGER NOT NULL,
    dicom_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS frames (
    sop_uid TEXT NOT NULL REFERENCES instances(sop_uid),
    number INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    codestream TEXT NOT NULL,
    digest TEXT,
    PRIMARY KEY (sop_uid, number)
);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY,
    sop_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    object_digest TEXT NOT NULL,
    pixel_digest TEXT,
    source_path TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    source_path TEXT NOT NULL,
    source_size INTEGER NOT NULL,
    source_mtime_ns INTEGER NOT NULL,
    source_digest TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    sop_uid TEXT,
    bytes_in INTEGER,
    bytes_out INTEGER,
    pixel_digest TEXT,
    object_digest TEXT,
    frames INTEGER,
    seconds REAL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_source ON ledger(source_path, source_size, source_mtime_ns);
CREATE TABLE IF NOT EXISTS migration (
    source TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    expected INTEGER,
    received INTEGER,
    archived INTEGER,
    failed INTEGER,
    warning INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    detail TEXT,
    first_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, study_uid)
);
"""

#: Study- and series-level attributes held in the studies/series rows (the
#: instances rows hold every attribute).
STUDY_TAGS = ("00080020", "00080030", "00080050", "00080090", "00081030", "00100010", "00100020",
              "00100030", "00100040", "0020000D", "00200010", "00080005")
SERIES_TAGS = ("00080060", "0008103E", "0020000E", "00200011", "00080021", "00080031", "00080005")


@dataclass(frozen=True, slots=True)
class InstanceRow:
    sop_uid: str
    series_uid: str
    study_uid: str
    path: str
    transfer_syntax: str
    outcome: str
    reason: str | None
    size: int
    object_digest: str
    pixel_digest: str | None
    frames: int
    dicom_json: str


LEDGER_COLUMNS = ("source_path", "source_size", "source_mtime_ns", "source_digest", "outcome", "reason", "detail",
                  "sop_uid", "bytes_in", "bytes_out", "pixel_digest", "object_digest", "frames", "seconds")


@dataclass(frozen=True, slots=True)
class FrameRow:
    """A stored frame: its codestream's byte range in the object, its
    codestream index, and the digest of those bytes (which the server checks
    on every read; None in an index written before frames had digests)."""

    number: int
    offset: int
    length: int
    codestream: dict[str, Any]
    digest: str | None = None


@dataclass
class Record:
    """What one source file adds to the index: a ledger row (none for an
    instance rebuilt from its stored object, rebuild.py); an instance with
    its frames, or a conflict, when it placed an object."""

    ledger: dict[str, Any] | None
    instance: InstanceRow | None = None
    frames: Sequence[FrameRow] = ()
    study_json: str | None = None
    series_json: str | None = None
    conflict: tuple[str, str, str | None] | None = None


class Index:
    """The archive's SQLite index."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            self.db = sqlite3.connect(read_uri(path), uri=True, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA query_only=ON")
        else:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")

    def create(self) -> None:
        """Create what is missing of the schema (WAL mode, tables)."""
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self._add_frame_digests()

    def _add_frame_digests(self) -> None:
        """Give an index from before frame digests their column (empty: those
        frames are checked against their object's digest instead)."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(frames)")}
        if "digest" not in columns:
            self.db.execute("ALTER TABLE frames ADD COLUMN digest TEXT")

    def _has(self, table: str) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() \
            is not None

    def identity(self) -> Identity | None:
        """The archive identity this index was written for; None for an
        index without one (empty, or made before identities existed).
        Raises sqlite3.DatabaseError for a file that is not an index."""
        if not self._has("meta"):
            return None
        meta = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN ('archive', 'generation')"))
        if len(meta) != 2:
            return None
        return Identity(meta["archive"], int(meta["generation"]))

    def set_identity(self, identity: Identity) -> None:
        """Record `identity` (committed before this returns)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [("archive", identity.archive), ("generation", str(identity.generation))])

    def listed(self) -> tuple[int, int]:
        """(instances, conflict paths): how many stored files the index lists
        (the same conflicting content sent twice is two rows, one file)."""
        return tuple(  # type: ignore[return-value]
            self.db.execute(f"SELECT COUNT(DISTINCT path) FROM {table}").fetchone()[0] if self._has(table) else 0
            for table in ("instances", "conflicts")
        )

    def close(self) -> None:
        self.db.close()

    def instance(self, sop_uid: str) -> InstanceRow | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return InstanceRow(*row) if row else None

    def instances(self) -> Iterator[InstanceRow]:
        for row in self.db.execute(f"SELECT {_COLUMNS} FROM instances ORDER BY study_uid, series_uid, sop_uid"):
            yield InstanceRow(*row)

    def frames(self, sop_uid: str) -> list[FrameRow]:
        rows = self.db.execute(
            "SELECT number, offset, length, codestream, digest FROM frames WHERE sop_uid = ? ORDER BY number",
            (sop_uid,),
        )
        return [FrameRow(n, o, ln, json.loads(cs), d) for n, o, ln, cs, d in rows]

    def done(self, source: str, size: int, mtime_ns: int) -> bool:
        """Has this very file (path, size, mtime) already been archived, kept
        or found a duplicate? Failed files are tried again: the cause may
        have been fixed (a full disk, a permission), and failing is cheap."""
        row = self.db.execute(
            "SELECT 1 FROM ledger WHERE source_path = ? AND source_size = ? AND source_mtime_ns = ? "
            "AND outcome != 'failed' LIMIT 1",
            (source, size, mtime_ns),
        ).fetchone()
        return row is not None

    def record(self, records: Sequence[Record]) -> None:
        """Commit source files' outcomes, and what they added, in one transaction."""
        with self.db:  # BEGIN ... COMMIT, or ROLLBACK on error
            self.db.execute("BEGIN IMMEDIATE")
            for record in records:
                self._record(record)

    def _record(self, record: Record) -> None:
        instance, ledger = record.instance, record.ledger
        if instance is not None:
            self.db.execute("INSERT OR IGNORE INTO studies VALUES (?, ?)", (instance.study_uid, record.study_json or "{}"))
            self.db.execute(
                "INSERT OR IGNORE INTO series VALUES (?, ?, ?)",
                (instance.series_uid, instance.study_uid, record.series_json or "{}"),
            )
            self.db.execute(
                f"INSERT OR REPLACE INTO instances ({_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                tuple(getattr(instance, name) for name in InstanceRow.__slots__),
            )
            self.db.execute("DELETE FROM frames WHERE sop_uid = ?", (instance.sop_uid,))
            self.db.executemany(
                "INSERT INTO frames (sop_uid, number, offset, length, codestream, digest) VALUES (?, ?, ?, ?, ?, ?)",
                [(instance.sop_uid, f.number, f.offset, f.length, json.dumps(f.codestream), f.digest)
                 for f in record.frames],
            )
        if record.conflict is not None:
            path, digest, pixel_digest = record.conflict
            assert ledger is not None
            self.db.execute(
                "INSERT INTO conflicts (sop_uid, path, object_digest, pixel_digest, source_path, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (ledger["sop_uid"], path, digest, pixel_digest, ledger["source_path"], time.time()),
            )
        if ledger is not None:
            columns = [c for c in LEDGER_COLUMNS if c in ledger]
            self.db.execute(
                f"INSERT INTO ledger ({', '.join(columns)}, at) VALUES ({', '.join('?' * (len(columns) + 1))})",
                [*(ledger[c] for c in columns), time.time()],
            )

    def migration(self, source: str) -> dict[str, MigrationRow]:
        """The studies a migration from the PACS `source` (its AE title) has
        recorded, by Study Instance UID."""
        rows = self.db.execute(f"SELECT {_MIGRATION} FROM migration WHERE source = ?", (source,))
        return {row[1]: MigrationRow(*row) for row in rows}

    def set_migration(self, source: str, study_uid: str, state: str, **counts: int | str | None) -> None:
        """Record a study's migration `state` with `counts` (columns of
        `MigrationRow`: expected, received, archived, failed, warning,
        detail); entering "retrieving" counts an attempt. Committed on return."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO migration (source, study_uid, state, first_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (source, study_uid) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (source, study_uid, state, now, now),
            )
            updates = {name: value for name, value in counts.items() if name in _MIGRATION_COUNTS}
            if state == "retrieving":
                self.db.execute("UPDATE migration SET attempts = attempts + 1 WHERE source = ? AND study_uid = ?",
                                (source, study_uid))
            if updates:
                self.db.execute(f"UPDATE migration SET {', '.join(f'{name} = ?' for name in updates)} "
                                "WHERE source = ? AND study_uid = ?", (*updates.values(), source, study_uid))

    def study_instances(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs archived in a study."""
        return {row[0] for row in self.db.execute("SELECT sop_uid FROM instances WHERE study_uid = ?", (study_uid,))}

    def counts(self) -> dict[str, int]:
        return {
            table: self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("studies", "series", "instances", "frames", "conflicts", "ledger")
        }


_COLUMNS = ", ".join(InstanceRow.__slots__)


@dataclass(frozen=True, slots=True)
class MigrationRow:
    """One study of a migration from a PACS (`transcode migrate`): its state
    (pending, retrieving, done, incomplete, failed), the PACS's instance
    count, what was received and archived, C-GET's failed and warning
    sub-operations, attempts, why (detail) and when (seconds since the epoch)."""

    source: str
    study_uid: str
    state: str
    expected: int | None
    received: int | None
    archived: int | None
    failed: int | None
    warning: int | None
    attempts: int
    detail: str | None
    first_at: float
    updated_at: float


_MIGRATION = ", ".join(MigrationRow.__slots__)
_MIGRATION_COUNTS = frozenset({"expected", "received", "archived", "failed", "warning", "detail"})


def read_uri(path: Path) -> str:
    """The SQLite URI that opens the index at `path` read-only. In a folder
    this process cannot write (a read-only mount, another owner), SQLite
    cannot create the WAL index file a reader needs; the database is then
    opened as immutable: nobody can be writing it (and a -wal file left
    beside it by a writer that was killed is not read)."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    return uri if os.access(path.parent, os.W_OK) else f"{uri}&immutable=1"
