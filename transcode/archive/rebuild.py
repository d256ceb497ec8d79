"""`transcode verify --rebuild-index`: a new index, from the stored objects.

Every file under objects/ and conflicts/ is read (describe.py): its
instances, frames, studies, series and conflicts rows are computed as ingest
computes them, into a new index file beside the old one, which then replaces
it by a rename; the marker (identity.py) is raised last. A crash at any point
leaves the old index in place, or the new one a generation ahead of the
marker, which is accepted.

Not everything is in the objects. What is taken from the old index, when it
can be read (never from a row whose object digest differs from the object):

- the ledger (source files and their outcomes) and the migration table
  (each study's state in a migration from a PACS): they describe sources,
  not objects, and cannot be rebuilt; without a readable old index they
  start empty, and the next ingest or migration of the same sources reads
  them again (their objects are then found to be duplicates);
- why an instance was kept as is, and a conflict's source path and time.
  Without the old row the reason is decided again, by `transcode_file` on
  the stored copy (a byte-exact copy of the source: the same decision); a
  conflict's source path is then empty and its time the file's.

The rebuild takes the writer lock (no ingest or STOW-RS meanwhile) and
refuses while another process has the index open (a running
`transcode serve`): a server holding the old file would keep serving it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transcode.archive.check import Problem
from transcode.archive.describe import StoredObject, describe
from transcode.archive.identity import ArchiveMismatch, Identity, read_marker, write_marker
from transcode.archive.layout import Layout
from transcode.archive.store import ArchiveBusy, take_lock
from transcode.catalog.base import LEDGER_COLUMNS, InstanceRow, Record
from transcode.catalog.sqlite import SQLiteCatalog
from transcode.dicom.write import fsync_path
from transcode.policy import Outcome
from transcode.transcoder import transcode_file

log = logging.getLogger(__name__)
#: Objects indexed per transaction.
BATCH = 256


@dataclass
class Rebuilt:
    """What the rebuild wrote, and the stored files it could not index."""

    instances: int = 0
    frames: int = 0
    conflicts: int = 0
    ledger: int = 0
    #: Studies of migrations kept from the old index.
    migrations: int = 0
    #: Whether the old index had a ledger to keep (not when it was emptied,
    #: missing or unreadable: kept instances' reasons are then decided again).
    ledger_kept: bool = False
    identity: Identity | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class _Old:
    """What only the old index knows, by archive-relative path."""

    identity: Identity | None = None
    kept: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # path -> (object digest, reason)
    #: path -> (object digest, source path, time) of each source file that conflicted with that content
    conflicts: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)
    ledger_columns: list[str] = field(default_factory=list)
    migration_columns: list[str] = field(default_factory=list)


def _read_old(index: SQLiteCatalog) -> _Old:
    old = _Old(identity=index.identity())
    db = index.db
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "instances" in tables:
        rows = db.execute("SELECT path, object_digest, reason FROM instances WHERE outcome = 'kept'")
        old.kept = {path: (digest, reason) for path, digest, reason in rows}
    if "conflicts" in tables:
        for path, digest, source, at in db.execute(
                "SELECT path, object_digest, source_path, at FROM conflicts ORDER BY id"):
            old.conflicts.setdefault(path, []).append((digest, source, at))
    if "ledger" in tables:
        present = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
        old.ledger_columns = [c for c in ("id", *LEDGER_COLUMNS, "at") if c in present]
    if "migration" in tables:
        old.migration_columns = [row[1] for row in db.execute("PRAGMA table_info(migration)")]
    return old


def _carry_over(old: SQLiteCatalog, new: SQLiteCatalog, table: str, columns: list[str], order: str = "") -> int:
    """Copy `columns` of every row of `table` from the old index to the
    new; the number of rows copied."""
    if not columns:
        return 0
    names = ", ".join(columns)
    rows = old.db.execute(f"SELECT {names} FROM {table} {order}")
    with new.db:
        new.db.execute("BEGIN IMMEDIATE")
        return new.db.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})",
                                  rows).rowcount


def _kept_reason(path: Path, scratch: Path) -> str | None:
    """Why the object at `path`, kept as is, was not transcoded: decided
    again by the same function on the same bytes (headers usually decide,
    without decoding anything)."""
    result = transcode_file(path, scratch / "probe.dcm", copy_kept=False, durable=False, workers=1)
    (scratch / "probe.dcm").unlink(missing_ok=True)
    if result.outcome is Outcome.KEPT:
        return result.reason.value if result.reason else None
    log.warning("%s: kept as is, but now %s (%s); indexed as kept without a reason", path, result.outcome.value,
                result.reason.value if result.reason else "")
    return None


def _instance_record(obj: StoredObject, relative: str, reason: str | None) -> Record:
    outcome = Outcome.TRANSCODED if obj.transcoded else Outcome.KEPT
    row = InstanceRow(obj.sop_uid, obj.series_uid, obj.study_uid, relative, obj.transfer_syntax, outcome.value,
                      reason, obj.size, obj.object_digest, obj.pixel_digest, obj.frame_count, obj.meta.text())
    return Record(ledger=None, instance=row, frames=obj.frames, study_json=obj.study_json,
                  series_json=obj.series_json)


def _retire(layout: Layout, readable: bool) -> None:
    """Make sure nothing of the old index's write-ahead log survives the
    rename (it would be replayed into the new file). A readable old index is
    switched out of WAL mode, which SQLite allows only when no other process
    has it open: the check that no server is reading it."""
    if readable:
        db = sqlite3.connect(layout.index, timeout=0.5)
        try:
            db.execute("PRAGMA journal_mode=DELETE").fetchone()
        except sqlite3.OperationalError as exc:
            raise ArchiveBusy(f"{layout.index} is open in another process ({exc}): stop `transcode serve` "
                              "on this archive and run the rebuild again") from exc
        finally:
            db.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{layout.index}{suffix}").unlink(missing_ok=True)


def rebuild_index(root: str | os.PathLike[str]) -> Rebuilt:
    """Replace the index of the archive at `root` by one computed from its
    stored objects. Raises
    ArchiveBusy while an ingest or a server has the archive open. Objects
    that cannot be read are reported, not indexed, and left where they are."""
    layout = Layout(Path(root))
    if not layout.objects.is_dir():
        raise FileNotFoundError(f"{layout.root} is not an archive (no objects/ folder)")
    lock = take_lock(layout.lock)
    try:
        return _rebuild(layout)
    finally:
        os.close(lock)


def _rebuild(layout: Layout) -> Rebuilt:
    report = Rebuilt()
    try:
        marker = read_marker(layout.marker)
    except ArchiveMismatch as exc:
        log.warning("%s; a new one is written", exc)
        marker = None
    old, old_db, readable = _Old(), None, False
    if layout.index.is_file():
        try:
            old_db = SQLiteCatalog(layout.index, read_only=True)
            old = _read_old(old_db)
            readable = True
        except sqlite3.DatabaseError as exc:
            log.warning("%s cannot be read (%s): the ledger is not kept, kept instances' reasons are decided again",
                        layout.index, exc)
    fresh = layout.root / "index.sqlite.rebuild"
    for leftover in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm"), Path(f"{fresh}-journal")):
        leftover.unlink(missing_ok=True)  # from a rebuild that was killed
    new = SQLiteCatalog(fresh)
    try:
        new.create()
        identity = marker or old.identity
        report.identity = identity.next() if identity else Identity.new()
        new.set_identity(report.identity)
        _index_objects(layout, new, old, report)
        report.ledger_kept = bool(old.ledger_columns)
        if old_db is not None:
            report.ledger = _carry_over(old_db, new, "ledger", old.ledger_columns, "ORDER BY id")
            report.migrations = _carry_over(old_db, new, "migration", old.migration_columns)
    except BaseException:
        new.close()
        fresh.unlink(missing_ok=True)
        raise
    finally:
        if old_db is not None:
            old_db.close()
    new.close()  # checkpoints: the new file is whole, no WAL beside it
    try:
        fsync_path(fresh)
        _retire(layout, readable)
    except BaseException:
        fresh.unlink(missing_ok=True)
        raise
    os.replace(fresh, layout.index)
    fsync_path(layout.root)
    write_marker(layout.marker, report.identity)
    return report


def _index_objects(layout: Layout, new: SQLiteCatalog, old: _Old, report: Rebuilt) -> None:
    seen: set[str] = set()
    batch: list[Record] = []
    layout.staging.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rebuild-", dir=layout.staging) as scratch:
        for path in [*layout.stored(layout.objects), *layout.stored(layout.conflicts)]:
            relative = str(path.relative_to(layout.root))
            try:
                obj = describe(path)
            except Exception as exc:  # one unreadable object never stops a rebuild
                report.problems.append(Problem(relative, f"not indexed: {type(exc).__name__}: {exc}"))
                continue
            if path.is_relative_to(layout.conflicts):
                # One row per source file that sent this content, as ingest wrote them.
                sources = [(source, at) for digest, source, at in old.conflicts.get(relative, [])
                           if digest == obj.object_digest] or [("", path.stat().st_mtime)]
                new.db.executemany(
                    "INSERT INTO conflicts (sop_uid, path, object_digest, pixel_digest, source_path, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(obj.sop_uid, relative, obj.object_digest, obj.pixel_digest, source, at) for source, at in sources],
                )
                report.conflicts += 1
            elif obj.sop_uid in seen:
                report.problems.append(Problem(relative, f"not indexed: SOP Instance UID {obj.sop_uid} is "
                                                         "already stored under another path"))
            else:
                seen.add(obj.sop_uid)
                reason = None
                if not obj.transcoded:
                    digest, reason = old.kept.get(relative, (None, None))
                    if digest != obj.object_digest:
                        reason = _kept_reason(path, Path(scratch))
                batch.append(_instance_record(obj, relative, reason))
                report.instances += 1
                report.frames += len(obj.frames)
            if len(batch) >= BATCH:
                new.record(batch)
                batch = []
        new.record(batch)

