"""One ingest service behind every door: STOW-RS, the C-STORE receiver,
a migration's retrieved instances, the Orthanc hook.

Each door hands the service finished files (spooled where the door chose)
and gets back one ingest entry per file, with the same outcomes, reasons
and ledger rows as `transcode ingest`, because it is `transcode ingest`:
`pipeline.Ingest` over a pool of worker processes that stays up between
calls (starting interpreters costs about half a second, a CT instance a few
milliseconds). Calls are serialised in this process and hold the archive's ingest lock,
so a door and a running `transcode ingest` never write at once.
Nothing is acknowledged before `store` returns, and it returns only once the
objects and their index rows are durable.

The service opens its own sessions from an `ArchiveAddress` (a folder, or
an `s3://` URL and its catalog folder). A door that receives a body
(STOW-RS) spools it with `upload()` in the archive's local folder
(`spool/uploads/` under the archive folder, or under the catalog folder of
an object-store archive; a local disk, not /tmp): what a killed server left
there was never acknowledged and is removed by `clear_uploads` when `serve`
starts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pydicom
from pydicom.datadict import tag_for_keyword

from transcode.archive import Archive, ArchiveBusy
from transcode.archive.objects import ArchiveAddress
from transcode.codecs.htj2k import EncodeSettings
from transcode.dicom.read import read_strings, readable_text
from transcode.entries import Entry, IngestOutcome, path_text
from transcode.pipeline import WorkerPool, ingest
from transcode.policy import OnConflict, Reason
from transcode.verify import CrossCheck

log = logging.getLogger(__name__)
#: Where uploads (STOW-RS bodies) are spooled, under the archive: never acknowledged, so cleared at start.
UPLOADS = Path("spool") / "uploads"

# Storage status codes (PS3.4 B.2.3, PS3.7 C.4) of an ingest entry, one mapping for every door:
# C-STORE answers them, STOW-RS gives the failures as Failure Reason (0008,1197) (PS3.18 10.5.3).
SUCCESS, KEPT_AS_IS, OUT_OF_RESOURCES = 0x0000, 0xB000, 0xA700
PROCESSING_FAILURE, DUPLICATE_SOP, CANNOT_UNDERSTAND = 0x0110, 0x0111, 0xC000
#: Statuses under which the instance is in the archive as sent (or was already).
STORED = frozenset({SUCCESS, KEPT_AS_IS})
#: Failed for what the bytes are: not an instance that can be archived.
_UNDERSTANDING = {Reason.NOT_DICOM, Reason.MISSING_FILE_META, Reason.NO_SOP_INSTANCE_UID, Reason.BAD_PIXEL_DATA,
                  Reason.TRUNCATED, Reason.INVALID_UID, Reason.UNREADABLE}


def storage_status(entry: Entry) -> int:
    """The storage status of an ingest entry: success when transcoded, a
    duplicate of the archived copy or its replacement; the warning 0xB000
    when kept as is (stored as received, not transcoded: PS3.4 has no closer
    warning, and the Error Comment says why); 0x0111 for a conflicting copy
    (set aside, not the archived instance); 0xC000 for bytes that cannot be
    an archived instance; 0x0110 for any other failure."""
    outcome = entry.outcome
    if outcome in (IngestOutcome.TRANSCODED, IngestOutcome.DUPLICATE, IngestOutcome.REPLACED):
        return SUCCESS
    if outcome == IngestOutcome.KEPT:
        return KEPT_AS_IS
    if outcome == IngestOutcome.CONFLICT:
        return DUPLICATE_SOP
    return CANNOT_UNDERSTAND if entry.reason in _UNDERSTANDING else PROCESSING_FAILURE


class Sent(NamedTuple):
    """The identity of an instance as sent, where readable (None where not)."""

    sop_class: str | None
    sop: str | None
    study: str | None
    series: str | None


#: What `identify` reads, in `Sent`'s order.
_SENT = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_SENT_TAGS = tuple(tag_for_keyword(keyword) for keyword in _SENT)


def identify(path: Path) -> Sent:
    """Read the SOP Class, SOP Instance, Study and Series Instance UIDs of
    the file at `path` as sent (with the structure walk, else pydicom); all
    None where neither can read it (the ingest then says why)."""
    values = read_strings(path, _SENT_TAGS)
    if values is not None:
        return Sent(*values)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_SENT))
    except Exception:  # noqa: BLE001 (anything unreadable: the ingest will say why)
        return Sent(None, None, None, None)
    return Sent(*(readable_text(ds, keyword) for keyword in _SENT))  # the ingest says why one is unreadable


def out_of_space(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the quota) is full, as an OSError
    or as SQLite's "database or disk is full"."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def clear_uploads(root: Path) -> None:
    """Remove what killed servers left in the upload spool of the archive
    whose local folder is `root` (call
    once, before any door receives: it removes uploads in progress too)."""
    folder = Path(root) / UPLOADS
    if folder.is_dir():
        for leftover in folder.iterdir():
            log.info("removing an upload a stopped server left: %s", leftover.name)
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


class ServiceBusy(RuntimeError):
    """Another call of this service held it for longer than the caller waits."""


class IngestService:
    """Ingest into the archive at `archive` (an `ArchiveAddress`, or a
    folder path) with `workers` persistent worker
    processes (started by the first call). Options are `transcode ingest`'s.

    The archive's write session (its ingest lock and index) stays open
    between calls until `hold` seconds pass without one: a receiver taking
    instance after instance pays for opening it once, not per instance
    (two index commits and two marker writes each time). While it is held,
    another writer (`transcode ingest`, another server) is refused with
    `ArchiveBusy`; `hold=0` releases it after every call. A call that
    finds another process's session (another server node's, idle for less
    than its `hold`) waits up to `busy_wait` seconds for it before raising
    `ArchiveBusy`. `nice`: the workers' priority below the caller's
    (`WorkerPool`)."""

    def __init__(
        self,
        archive: ArchiveAddress | str | os.PathLike[str],
        *,
        workers: int = 2,
        settings: EncodeSettings | None = None,
        crosscheck: CrossCheck | str = CrossCheck.SAMPLE,
        on_conflict: OnConflict | str = OnConflict.KEEP,
        hold: float = 2.0,
        busy_wait: float = 10.0,
        nice: int = 0,
    ) -> None:
        self.address = ArchiveAddress.of(archive)
        self.settings = settings
        self.crosscheck = CrossCheck(crosscheck)
        self.on_conflict = OnConflict(on_conflict)
        self.hold, self.busy_wait = hold, busy_wait
        self._pool = WorkerPool(workers, nice)
        self._lock = threading.Lock()
        self._archive: Archive | None = None
        self._last_call = 0.0
        self._releaser: threading.Timer | None = None

    def store(self, files: Sequence[Path | str], *, wait: float = 600.0) -> list[Entry]:
        """Ingest `files` (new paths: the ledger skips a path, size and mtime
        it holds) and return their entries, in the order given, once they
        are durable. Raises `ServiceBusy` after `wait` seconds behind
        other calls, `ArchiveBusy` while another process ingests into the
        archive for longer than `busy_wait`, `ArchiveMismatch` when its index
        is not the archive's."""
        if not files:
            return []
        if not self._lock.acquire(timeout=wait):
            raise ServiceBusy(f"another ingest into {self.address} has run for over {wait:.0f} s")
        try:
            if self._archive is None:
                self._archive = self._open_session()
            try:
                report = ingest(
                    [str(path) for path in files], self._archive, pool=self._pool, settings=self.settings,
                    crosscheck=self.crosscheck, on_conflict=self.on_conflict,
                )
            except BaseException:
                self._release()  # whatever failed, the next call starts from a fresh session
                raise
            self._last_call = time.monotonic()
            if self.hold <= 0:
                self._release()
            elif self._releaser is None:
                self._releaser = threading.Timer(self.hold, self._release_when_idle)
                self._releaser.daemon = True
                self._releaser.start()
        finally:
            self._lock.release()
        by_path = {entry.source_path: entry for entry in report.entries}
        sources = [path_text(Path(path).absolute()) for path in files]
        missing = [source for source in sources if source not in by_path]
        if missing:  # the ledger skipped them: a door must spool each instance under a new name
            raise ValueError(f"already ingested under the same path, size and mtime: {', '.join(missing)}")
        return [by_path[source] for source in sources]

    def _open_session(self) -> Archive:
        """A write session, waiting up to `busy_wait` s while another process holds one."""
        deadline = time.monotonic() + self.busy_wait
        while True:
            try:
                return self.address.open(exclusive=True)
            except ArchiveBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    @contextlib.contextmanager
    def upload(self) -> Iterator[Path]:
        """A new, empty folder in the archive's upload spool (in its local
        folder) for the files of one upload, removed with what it holds on leaving."""
        folder = self.address.local / UPLOADS / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _release_when_idle(self) -> None:
        """Timer thread: close the write session once `hold` seconds have
        passed since the last call, else look again when they will have."""
        with self._lock:
            self._releaser = None
            idle = time.monotonic() - self._last_call
            if idle >= self.hold:
                self._release()
            elif self._archive is not None:
                self._releaser = threading.Timer(self.hold - idle, self._release_when_idle)
                self._releaser.daemon = True
                self._releaser.start()

    def _release(self) -> None:
        """Close the write session, if one is open (the caller holds the lock)."""
        archive, self._archive = self._archive, None
        if archive is not None:
            archive.close()

    def close(self) -> None:
        """Close the write session and stop the worker processes (after the
        calls under way)."""
        with self._lock:
            if self._releaser is not None:
                self._releaser.cancel()
                self._releaser = None
            self._release()
        self._pool.close()
