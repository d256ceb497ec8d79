"""The `Catalog` interface: studies, series, instances (DICOM JSON), frames,
ledger, conflicts and migration rows, whatever database holds them.

Everything the server needs is here: a frame's byte offset and length inside
the stored object and its codestream index (resolution levels, tiles), so
serving never parses a file. The ledger records what became of every source
file, so a rerun skips what is done and a report can be rebuilt at any time.

The statements are written once here; a backend (sqlite.py, postgres.py)
supplies its connections, its transactions, its writer lock and a `Dialect`
for the few fragments that differ. Two sides:

- the write side, on one connection used by one process (the ingest's
  coordinator, `verify`, STOW-RS): `identity`, `create`, `record` (one
  transaction per batch, committed after its objects are durable), `done`,
  migration rows, conflicts, counts;
- the read side the server uses from many threads (`stored`, `members`,
  `search`, ...): each backend reads through connections of its own (one
  read-only SQLite connection per thread; a PostgreSQL pool), so readers see
  the last committed state while a writer writes.

Opening writes nothing: the schema is created (`create`) only once the
archive has checked that this catalog is its own (identity.py), so that an
emptied or foreign catalog is refused as it is, not turned into an empty one.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from transcode.catalog.dialect import Dialect

if TYPE_CHECKING:  # imported where used: transcode.archive's package imports this one
    from transcode.archive.identity import Identity

#: The schema; `{int}`, `{real}`, `{serial}` and `{arrival}` are the
#: dialect's types (sqlite.py and postgres.py fill them in).
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,{arrival}
    dicom_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,{arrival}
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    dicom_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,{arrival}
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    size {int} NOT NULL,
    object_digest TEXT NOT NULL,
    pixel_digest TEXT,
    frames {int} NOT NULL,
    dicom_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS frames (
    sop_uid TEXT NOT NULL REFERENCES instances(sop_uid),
    number {int} NOT NULL,
    "offset" {int} NOT NULL,
    length {int} NOT NULL,
    codestream TEXT NOT NULL,
    digest TEXT,
    PRIMARY KEY (sop_uid, number)
);
CREATE TABLE IF NOT EXISTS conflicts (
    id {serial},
    sop_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    object_digest TEXT NOT NULL,
    pixel_digest TEXT,
    source_path TEXT NOT NULL,
    at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    id {serial},
    source_path TEXT NOT NULL,
    source_size {int} NOT NULL,
    source_mtime_ns {int} NOT NULL,
    source_digest TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    sop_uid TEXT,
    bytes_in {int},
    bytes_out {int},
    pixel_digest TEXT,
    object_digest TEXT,
    frames {int},
    seconds {real},
    at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_source ON ledger(source_path, source_size, source_mtime_ns);
CREATE TABLE IF NOT EXISTS migration (
    source TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    expected {int},
    received {int},
    archived {int},
    failed {int},
    warning {int},
    attempts {int} NOT NULL DEFAULT 0,
    detail TEXT,
    first_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    PRIMARY KEY (source, study_uid)
);
"""

#: Study- and series-level attributes held in the studies/series rows (the
#: instances rows hold every attribute).
STUDY_TAGS = ("00080020", "00080030", "00080050", "00080090", "00081030", "00100010", "00100020",
              "00100030", "00100040", "0020000D", "00200010", "00080005")
SERIES_TAGS = ("00080060", "0008103E", "0020000E", "00200011", "00080021", "00080031", "00080005")


class CatalogError(RuntimeError):
    """The catalog cannot be reached or read (a server down, a damaged
    file): the message is a sentence for a log, never shown to a client."""


class ArchiveBusy(RuntimeError):
    """Another process is ingesting into this archive."""


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
    """What one source file adds to the catalog: a ledger row (none for an
    instance rebuilt from its stored object, rebuild.py); an instance with
    its frames, or a conflict, when it placed an object."""

    ledger: dict[str, Any] | None
    instance: InstanceRow | None = None
    frames: Sequence[FrameRow] = ()
    study_json: str | None = None
    series_json: str | None = None
    conflict: tuple[str, str, str | None] | None = None


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


COLUMNS = ", ".join(InstanceRow.__slots__)
_MIGRATION = ", ".join(MigrationRow.__slots__)
_MIGRATION_COUNTS = frozenset({"expected", "received", "archived", "failed", "warning", "detail"})
_UPSERT_INSTANCE = (
    f"INSERT INTO instances ({COLUMNS}) VALUES ({', '.join('?' * len(InstanceRow.__slots__))}) "
    "ON CONFLICT (sop_uid) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in InstanceRow.__slots__[1:])
)
_INSERT_FRAME = 'INSERT INTO frames (sop_uid, number, "offset", length, codestream, digest) VALUES (?, ?, ?, ?, ?, ?)'


class Catalog(ABC):
    """The archive's catalog (see the module docstring). `name` says which
    one in messages; `path` is its file, for a backend that has one."""

    dialect: Dialect
    name: str
    path: Path | None = None

    # -- what a backend supplies ------------------------------------------

    @abstractmethod
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a statement on the writer's connection (inside `_transaction`
        when one is open); the rows it returns."""

    def _stream(self, sql: str) -> Iterable[tuple[Any, ...]]:
        """The rows of a query on the writer's connection, for a backend
        that can hand them over as they come rather than all at once."""
        return self._rows(sql)

    @abstractmethod
    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per row of arguments on the writer's connection."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]:
        """One transaction on the writer's connection: committed on exit,
        rolled back on an error."""

    @abstractmethod
    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query on a reader's connection (safe from any thread)."""

    @abstractmethod
    def _has(self, table: str) -> bool:
        """Whether the table exists."""

    @abstractmethod
    def create(self) -> None:
        """Create what is missing of the schema."""

    @abstractmethod
    def lock(self) -> None:
        """Take the archive's writer lock for as long as this catalog is
        open (released by `close`, or by the system when the process dies);
        ArchiveBusy when another process holds it."""

    @abstractmethod
    def close(self) -> None: ...

    def _frame_digest(self) -> str:
        """The SQL for a frame's digest in the server's lookups."""
        return "f.digest"

    # -- identity ---------------------------------------------------------

    def identity(self) -> Identity | None:
        """The archive identity this catalog was written for; None for one
        without (empty, or made before identities existed). Raises the
        backend's error (CatalogError) for one that cannot be read."""
        from transcode.archive.identity import Identity

        if not self._has("meta"):
            return None
        meta = dict(self._rows("SELECT key, value FROM meta WHERE key IN ('archive', 'generation')"))
        if len(meta) != 2:
            return None
        return Identity(meta["archive"], int(meta["generation"]))

    def set_identity(self, identity: Identity) -> None:
        """Record `identity` (committed before this returns)."""
        with self._transaction():
            self._many("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       [("archive", identity.archive), ("generation", str(identity.generation))])

    # -- the write side ---------------------------------------------------

    def listed(self) -> tuple[int, int]:
        """(instances, conflict paths): how many stored files the catalog
        lists (the same conflicting content sent twice is two rows, one file)."""
        return tuple(  # type: ignore[return-value]
            self._rows(f"SELECT COUNT(DISTINCT path) FROM {table}")[0][0] if self._has(table) else 0
            for table in ("instances", "conflicts")
        )

    def instance(self, sop_uid: str) -> InstanceRow | None:
        rows = self._rows(f"SELECT {COLUMNS} FROM instances WHERE sop_uid = ?", (sop_uid,))
        return InstanceRow(*rows[0]) if rows else None

    def object_version(self, sop_uid: str) -> tuple[str, str] | None:
        """An archived instance's object path and object digest (None: not
        archived): what a server compares with an instance it has cached,
        from any thread, without reading its DICOM JSON."""
        rows = self._read("SELECT path, object_digest FROM instances WHERE sop_uid = ?", (sop_uid,))
        return (rows[0][0], rows[0][1]) if rows else None

    def instances(self) -> Iterator[InstanceRow]:
        """Every instance, by study, series and SOP Instance UID."""
        for row in self._stream(f"SELECT {COLUMNS} FROM instances ORDER BY study_uid, series_uid, sop_uid"):
            yield InstanceRow(*row)

    def frames(self, sop_uid: str) -> list[FrameRow]:
        rows = self._rows('SELECT number, "offset", length, codestream, digest FROM frames WHERE sop_uid = ? '
                          "ORDER BY number", (sop_uid,))
        return [FrameRow(n, o, ln, json.loads(cs), d) for n, o, ln, cs, d in rows]

    def conflict_paths(self) -> set[str]:
        """The paths of the stored conflicting copies."""
        return {path for (path,) in self._rows("SELECT path FROM conflicts")}

    def done(self, source: str, size: int, mtime_ns: int) -> bool:
        """Has this very file (path, size, mtime) already been archived, kept
        or found a duplicate? Failed files are tried again: the cause may
        have been fixed (a full disk, a permission), and failing is cheap."""
        return bool(self._rows(
            "SELECT 1 FROM ledger WHERE source_path = ? AND source_size = ? AND source_mtime_ns = ? "
            "AND outcome != 'failed' LIMIT 1",
            (source, size, mtime_ns),
        ))

    def record(self, records: Sequence[Record]) -> None:
        """Commit source files' outcomes, and what they added, in one
        transaction: one statement per kind of row for the whole batch
        (PostgreSQL pipelines each `executemany`: a round trip per
        statement per record made its single writer the first limit of a
        scaled-out ingest, benchmarks/scaling_model.py). As if recorded one
        after the other: the last record of a SOP Instance UID in the batch
        leaves its instance row and frames."""
        placed = [r for r in records if r.instance is not None]
        last = {r.instance.sop_uid: r for r in placed}  # type: ignore[union-attr]
        with self._transaction():
            self._many("INSERT INTO studies (study_uid, dicom_json) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       [(r.instance.study_uid, r.study_json or "{}") for r in placed])  # type: ignore[union-attr]
            self._many("INSERT INTO series (series_uid, study_uid, dicom_json) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                       [(r.instance.series_uid, r.instance.study_uid, r.series_json or "{}")  # type: ignore[union-attr]
                        for r in placed])
            self._many(_UPSERT_INSTANCE, [tuple(getattr(r.instance, name) for name in InstanceRow.__slots__)
                                          for r in placed])
            self._many("DELETE FROM frames WHERE sop_uid = ?", [(sop,) for sop in last])
            self._many(_INSERT_FRAME, [(sop, f.number, f.offset, f.length, json.dumps(f.codestream), f.digest)
                                       for sop, r in last.items() for f in r.frames])
            conflicts = [r for r in records if r.conflict is not None]
            assert all(r.ledger is not None for r in conflicts)  # a conflict comes from a source file
            self._many("INSERT INTO conflicts (sop_uid, path, object_digest, pixel_digest, source_path, at) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       [(r.ledger["sop_uid"], *r.conflict, r.ledger["source_path"], time.time())  # type: ignore[index,misc]
                        for r in conflicts])
            ledgers: dict[tuple[str, ...], list[list[Any]]] = {}
            for r in records:  # the time of each row, as when they were recorded one at a time
                if r.ledger is not None:
                    columns = tuple(c for c in LEDGER_COLUMNS if c in r.ledger)
                    ledgers.setdefault(columns, []).append([*(r.ledger[c] for c in columns), time.time()])
            for columns, rows in ledgers.items():
                self._many(f"INSERT INTO ledger ({', '.join(columns)}, at) VALUES ({', '.join('?' * (len(columns) + 1))})",
                           rows)

    def migration(self, source: str) -> dict[str, MigrationRow]:
        """The studies a migration from the PACS `source` (its AE title) has
        recorded, by Study Instance UID."""
        rows = self._rows(f"SELECT {_MIGRATION} FROM migration WHERE source = ?", (source,))
        return {row[1]: MigrationRow(*row) for row in rows}

    def set_migration(self, source: str, study_uid: str, state: str, **counts: int | str | None) -> None:
        """Record a study's migration `state` with `counts` (columns of
        `MigrationRow`: expected, received, archived, failed, warning,
        detail); entering "retrieving" counts an attempt. Committed on return."""
        now = time.time()
        with self._transaction():
            self._rows(
                "INSERT INTO migration (source, study_uid, state, first_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (source, study_uid) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (source, study_uid, state, now, now),
            )
            updates = {name: value for name, value in counts.items() if name in _MIGRATION_COUNTS}
            if state == "retrieving":
                self._rows("UPDATE migration SET attempts = attempts + 1 WHERE source = ? AND study_uid = ?",
                           (source, study_uid))
            if updates:
                self._rows(f"UPDATE migration SET {', '.join(f'{name} = ?' for name in updates)} "
                           "WHERE source = ? AND study_uid = ?", (*updates.values(), source, study_uid))

    def study_instances(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs archived in a study."""
        return {row[0] for row in self._rows("SELECT sop_uid FROM instances WHERE study_uid = ?", (study_uid,))}

    def counts(self) -> dict[str, int]:
        return {
            table: self._rows(f"SELECT COUNT(*) FROM {table}")[0][0]
            for table in ("studies", "series", "instances", "frames", "conflicts", "ledger")
        }

    # -- the read side (the server's threads) ------------------------------

    def stored(self, study: str, series: str, sop: str) -> tuple[InstanceRow, list[tuple[Any, ...]]] | None:
        """An instance's row and its frames' (number, offset, length,
        codestream JSON, digest), in frame order; None when the catalog has
        no such instance in that series of that study."""
        rows = self._read(
            f"SELECT {', '.join(f'i.{c}' for c in InstanceRow.__slots__)}, f.number, f.\"offset\", f.length, "
            f"f.codestream, {self._frame_digest()} FROM instances i LEFT JOIN frames f ON f.sop_uid = i.sop_uid "
            "WHERE i.sop_uid = ? AND i.series_uid = ? AND i.study_uid = ? ORDER BY f.number",
            (sop, series, study),
        )
        if not rows:
            return None
        width = len(InstanceRow.__slots__)
        return InstanceRow(*rows[0][:width]), [row[width:] for row in rows if row[width] is not None]

    def dicom_json(self, sop_uid: str) -> str | None:
        """An instance's DICOM JSON text, as stored."""
        rows = self._read("SELECT dicom_json FROM instances WHERE sop_uid = ?", (sop_uid,))
        return rows[0][0] if rows else None

    def located(self, sop_uid: str) -> tuple[str, str] | None:
        """(study, series) of an archived instance."""
        rows = self._read("SELECT study_uid, series_uid FROM instances WHERE sop_uid = ?", (sop_uid,))
        return (rows[0][0], rows[0][1]) if rows else None

    def members(self, study: str, series: str | None = None) -> list[InstanceRow]:
        """The instances of a study (by series) or of one series, in the
        order viewers expect: by Instance Number, then arrival."""
        order = f"{self.dialect.instance_number()}, {self.dialect.arrival}"
        if series is None:
            rows = self._read(f"SELECT {COLUMNS} FROM instances WHERE study_uid = ? ORDER BY series_uid, {order}",
                              (study,))
        else:
            rows = self._read(f"SELECT {COLUMNS} FROM instances WHERE study_uid = ? AND series_uid = ? "
                              f"ORDER BY {order}", (study, series))
        return [InstanceRow(*row) for row in rows]

    def signature(self, study: str, series: str) -> tuple[Any, ...]:
        """What changes when an instance is added to the series (the zarr
        view's cache key): its count and latest arrival."""
        return tuple(self._read(f"SELECT count(*), max({self.dialect.arrival}) FROM instances "
                                "WHERE study_uid = ? AND series_uid = ?", (study, series))[0])

    def representative(self, level: str, uid: str) -> str | None:
        """The DICOM JSON of the first instance to arrive in a study
        (`level` "study") or series, for attributes its row does not hold."""
        column = "study_uid" if level == "study" else "series_uid"
        rows = self._read(f"SELECT dicom_json FROM instances WHERE {column} = ? "
                          f"ORDER BY {self.dialect.arrival} LIMIT 1", (uid,))
        return rows[0][0] if rows else None

    def patient_id(self, study_uid: str) -> str | None:
        """A study's Patient ID (None where the study or the attribute is
        unknown): what the audit trail records beside each study it names."""
        rows = self._read(f"SELECT {self.dialect.first_value('dicom_json', '00100020')} FROM studies "
                          "WHERE study_uid = ?", (study_uid,))
        return rows[0][0] if rows else None

    def search(self, level: str, keys: Mapping[str, str], page: int, offset: int) -> list[tuple[Any, ...]]:
        """The rows of a QIDO-RS search: see `search.build` for what they hold."""
        from transcode.catalog.search import build  # search.py imports this module's tag lists

        return self._read(*build(self.dialect, level, keys, page, offset))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
