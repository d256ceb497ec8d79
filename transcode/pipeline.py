"""Ingest: many source files into an archive, in parallel, resumable.

Worker processes transcode one file each into the archive's staging folder
(`transcode_file`, which uses threads over the frames). The coordinating
process alone touches the index: for every finished file it decides the
outcome (transcoded, kept, duplicate, conflict, failed), places the object
with an atomic rename, then commits the index rows and the ledger row in one
transaction. A kill at any moment leaves either a staged file (cleared on the
next run), or a placed object that the rerun replaces with the same bytes
before indexing it; never an index row without its object.

A rerun skips every source whose path, size and mtime the ledger already
holds, so repeating a finished command does no transcoding work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from transcode import logs
from transcode.archive.describe import number_of_frames
from transcode.archive.layout import InvalidUID, check_uid, conflict_path, object_path
from transcode.archive.objects import put_staged
from transcode.archive.store import Archive
from transcode.catalog.base import SERIES_TAGS, STUDY_TAGS, FrameRow, InstanceRow, Record
from transcode.codecs.htj2k import EncodeSettings
from transcode.dicom.metadata import DicomJson, dicom_json
from transcode.dicom.read import IDENTITY, ensure_regular
from transcode.digest import file_digest
from transcode.entries import Entry, IngestOutcome, IngestReport, Staged, path_text
from transcode.policy import OnConflict, Outcome, Reason, Resend, Version, resend
from transcode.transcoder import OUTPUT_SYNTAX, transcode_file
from transcode.verify import CrossCheck

#: Objects set aside are copied in pieces of this size (any backend, bounded memory).
_COPY_CHUNK = 16 << 20


def discover(paths: Iterable[str | os.PathLike[str]],
             exclude: Iterable[str | os.PathLike[str]] = ()) -> Iterator[Path]:
    """Every file under `paths`, once, as an absolute path. Folders are walked
    without following symlinked folders (no loops); nothing in `exclude` is
    walked or yielded (the archive, should it lie inside a source folder; the
    run's own report file); a DICOMDIR stands for the files it lists."""
    seen: set[Path] = set()
    skip = {Path(p).resolve() for p in exclude}

    def once(path: Path) -> Iterator[Path]:
        key = path.absolute()
        if key not in seen and key.resolve() not in skip:
            seen.add(key)
            yield key

    for top in (Path(p).absolute() for p in paths):
        if top.is_dir():
            for folder, dirs, files in os.walk(top):
                dirs[:] = sorted(d for d in dirs if Path(folder, d).resolve() not in skip)
                for name in sorted(files):
                    path = Path(folder, name)
                    yield from _dicomdir(path, once) if name == "DICOMDIR" else once(path)
        else:
            yield from _dicomdir(top, once) if top.name == "DICOMDIR" else once(top)


def _dicomdir(path: Path, once: Callable[[Path], Iterator[Path]]) -> Iterator[Path]:
    """The files a DICOMDIR references (they must lie beside or below it)."""
    try:
        fileset = FileSet(pydicom.dcmread(path))
    except (OSError, ValueError, InvalidDicomError):  # not a usable DICOMDIR: ingest it as a file
        yield from once(path)
        return
    root = path.parent.resolve()
    for instance in fileset:
        referenced = Path(instance.path).resolve()
        if referenced.is_relative_to(root):
            yield from once(referenced)


def work(source: str, staging: str, settings: EncodeSettings, crosscheck: str, threads: int) -> Entry:
    """Runs in a worker process: transcode `source` into staging and describe it.
    `staging` is a folder, or a URL (`Archive.remote_staging`) under which
    the finished object is put from a local temporary file."""
    started = time.perf_counter()
    path = Path(source)
    entry = Entry(source)
    try:
        stat = path.stat()
        ensure_regular(stat.st_mode, path)  # before the hasher opens it: a FIFO would hold its thread forever
    except OSError as exc:
        return _unreadable(entry, exc)
    entry.source_size, entry.source_mtime_ns = stat.st_size, stat.st_mtime_ns
    # Hashed beside the transcoding (reads and BLAKE3 release the GIL): on a
    # 640 MB tomosynthesis object, 0.1 s that would otherwise come first.
    source_digest = _HASHER.submit(file_digest, path)
    remote = "://" in staging
    staged = Path(tempfile.gettempdir() if remote else staging, f"{uuid.uuid4().hex}.dcm")
    # Not durable here: the coordinator fsyncs when it places the object.
    result = transcode_file(path, staged, settings=settings, crosscheck=crosscheck, workers=threads,
                            durable=False, metadata=True)
    try:
        entry.source_digest = source_digest.result()
    except OSError as exc:
        staged.unlink(missing_ok=True)
        return _unreadable(entry, exc)
    entry.outcome, entry.reason = IngestOutcome(result.outcome.value), result.reason.value if result.reason else None
    entry.detail, entry.bytes_in, entry.bytes_out = result.detail, result.bytes_in, result.bytes_out
    entry.pixel_digest, entry.object_digest = result.pixel_digest, result.output_digest
    entry.frames, entry.file_meta_constructed = result.frames, result.file_meta_constructed
    if result.destination:
        try:
            if result.metadata is None:  # kept as is: describe the copy
                ds = pydicom.dcmread(staged, stop_before_pixels=True)
                meta, tsyntax = _describe(ds, entry), str(ds.file_meta.TransferSyntaxUID)
                if "Rows" in ds and result.reason not in (Reason.NO_PIXEL_DATA, Reason.BAD_PIXEL_DATA):
                    # an image, kept whole: its frames are served from the copy
                    entry.frames = number_of_frames(ds)
            elif result.outcome is Outcome.KEPT:  # kept, described by what could be read of it
                meta, tsyntax = result.metadata, str(result.transfer_syntax)
            else:
                meta, tsyntax = result.metadata, str(OUTPUT_SYNTAX)
            entry.sop_uid = check_uid(meta.first("00080018"), "SOP Instance UID")
            entry.study_uid = check_uid(meta.first("0020000D"), "Study Instance UID")
            entry.series_uid = check_uid(meta.first("0020000E"), "Series Instance UID")
            entry.staged = Staged(
                str(staged), tsyntax, meta.text(), meta.text(STUDY_TAGS), meta.text(SERIES_TAGS),
                tuple(FrameRow(n, off, ln, ix.to_dict(), d) for n, ((off, ln), ix, d)
                      in enumerate(zip(result.frame_spans, result.frame_index, result.frame_digests, strict=True))),
            )
        except InvalidUID as exc:
            staged.unlink(missing_ok=True)
            entry.outcome, entry.reason, entry.detail = IngestOutcome.FAILED, Reason.INVALID_UID.value, str(exc)
    if remote and entry.staged:
        entry.staged = dataclasses.replace(entry.staged, path=put_staged(staging, staged))
    entry.seconds = time.perf_counter() - started
    return entry


def _describe(ds: Dataset, entry: Entry) -> DicomJson:
    """The DICOM JSON of a kept copy; where a value does not convert (an IS
    of "1A"), the JSON of its identifying elements, and the entry's detail
    says so: the copy is archived as received all the same."""
    try:
        return dicom_json(ds)
    except Exception as exc:  # pydicom's conversions, on values they do not expect: any error
        identity = Dataset()
        for keyword in IDENTITY:
            try:
                if keyword in ds:
                    identity.update({keyword: ds[keyword].value})
            except Exception:  # a value that does not convert is left out
                continue
        entry.detail = (f"{entry.detail}; indexed by its identifying elements only: its header does not convert to "
                            f"DICOM JSON ({type(exc).__name__}: {exc})")
        return dicom_json(identity)


#: How long finished files wait for the next ones before they are settled
#: together, and at most how many: per batch, not per file, the coordinator
#: fsyncs folders and commits the index (measured: 0.4 ms of its CPU per
#: file when each file was settled alone, with 3 ms files from 2 workers).
SETTLE_WINDOW = 0.05
SETTLE_BATCH = 64

#: Files in flight per local worker process (`Pool.ahead`).
AHEAD = 4

#: One thread per worker process for source digests.
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="source-digest")


def _unreadable(entry: Entry, exc: OSError) -> Entry:
    entry.outcome, entry.reason, entry.detail = IngestOutcome.FAILED, Reason.UNREADABLE.value, f"{exc.strerror or exc}"
    return entry


def _die_with_parent() -> None:
    """Worker initializer: on Linux, die when the coordinator dies (kill -9
    included) instead of finishing a file nobody will place."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the coordinator died before the call above
        os._exit(1)


def _start_worker(nice: int = 0) -> None:
    """Worker initializer: tied to the coordinator's life, logging as it
    does, `nice` steps below the coordinator's scheduling priority."""
    _die_with_parent()
    logs.inherit()
    if nice:
        os.nice(nice)


def _new_pool(workers: int, nice: int = 0) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")  # no fork of the SQLite connection or threads
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                               initargs=(nice,))


class Pool(Protocol):
    """Where `Ingest` runs `work`: `get` an executor of `workers` slots,
    `discard` one found broken (a `BrokenProcessPool`), `close` at the end.
    `WorkerPool` (local processes) and `cluster.DaskPool` (a Dask cluster).
    `ahead`: how many files may be in flight at once (submitted, not yet
    settled): enough that no worker waits for the coordinator. `remote`:
    workers may run on other machines (they put staged objects into a
    remote store themselves, `Archive.remote_staging`)."""

    workers: int
    ahead: int
    remote: bool

    def get(self) -> Executor: ...

    def discard(self, pool: Executor) -> None: ...

    def close(self) -> None: ...


class WorkerPool:
    """Worker processes that outlive one ingest run, for callers that ingest
    a few files at a time, often: each STOW-RS request of the server would
    otherwise pay for starting interpreters (about half a second) to
    transcode one instance in milliseconds. Started on first use; a pool
    broken by a crashing worker is replaced. `nice`: how far below the
    caller's scheduling priority the workers run (a receiver answering
    senders first, transcoding with what CPU is left)."""

    def __init__(self, workers: int, nice: int = 0) -> None:
        self.workers = workers
        self.nice = nice
        self.ahead = AHEAD * workers
        self.remote = False
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = _new_pool(self.workers, self.nice)
            return self._pool

    def discard(self, pool: Executor) -> None:
        """Forget `pool` (broken): the next `get` starts a new one."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class Ingest:
    """One ingest run into `archive`: `workers` processes over files, each
    with `threads` threads over frames (default: the cores shared out).
    While fewer files than workers are left (a lone tomosynthesis object,
    the tail of a run), each gets the idle workers' threads as well, so the
    `workers x threads` cores stay busy and memory stays within that many
    frames. `progress(report, done, total)` is called after every file,
    and `on_entry(entry)` with each file's entry once it is committed.
    A SOP Instance UID archived already is settled by `policy.resend`
    with `on_conflict`. Files in `exclude` (the run's report) and the
    archive's folder are never ingested.
    With `pool`, files go to those worker processes (its size is
    `workers`), which are left running for the next run; a `cluster.DaskPool`
    sends them to a Dask cluster instead."""

    def __init__(
        self,
        archive: Archive,
        *,
        workers: int | None = None,
        threads: int | None = None,
        settings: EncodeSettings | None = None,
        crosscheck: CrossCheck | str = CrossCheck.SAMPLE,
        progress: Callable[[IngestReport, int, int], None] | None = None,
        worker: Callable[..., Entry] | None = None,
        pool: Pool | None = None,
        on_entry: Callable[[Entry], None] | None = None,
        keep_entries: bool = True,
        on_conflict: OnConflict | str = OnConflict.KEEP,
        exclude: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        cores = os.cpu_count() or 1
        self.archive = archive
        self.shared = pool
        self.workers = pool.workers if pool else max(1, workers or cores)
        self.ahead = pool.ahead if pool else AHEAD * self.workers
        self.threads = max(1, threads or cores // self.workers)
        self.settings = settings or EncodeSettings()
        self.crosscheck = CrossCheck(crosscheck).value
        self.progress = progress
        #: The function run per file in a worker process (`work`); replaceable
        #: by any importable function with its signature.
        self.worker = worker or work
        self.on_entry = on_entry
        self.keep_entries = keep_entries
        self.on_conflict = OnConflict(on_conflict)
        self.exclude = [*([archive.root] if archive.root else []), *exclude]
        self.report = IngestReport()

    def run(self, paths: Iterable[str | os.PathLike[str]]) -> IngestReport:
        started = time.perf_counter()
        index = self.archive.index
        todo: list[str] = []
        for path in discover(paths, exclude=self.exclude):
            try:
                stat = path.stat()
            except OSError:
                todo.append(str(path))  # the worker reports why it cannot be read
                continue
            if index.done(path_text(path), stat.st_size, stat.st_mtime_ns):
                self.report.skipped += 1
            else:
                todo.append(str(path))
        if self.progress:
            self.progress(self.report, 0, len(todo))  # show the bar before the first file ends
        run = f"run-{uuid.uuid4().hex}"
        run_staging = self.archive.staging() / run
        run_staging.mkdir()
        self._local = str(run_staging)
        remote = self.archive.remote_staging(run) if self.shared and self.shared.remote else None
        self._staging = remote or self._local
        # Settled in discovery order, so that which of two copies of a SOP
        # Instance UID is "the" instance does not depend on timing; and in
        # batches (whatever finishes within SETTLE_WINDOW of the first), so
        # that one directory fsync and one transaction serve many files.
        pool = self._pool()
        pending: deque[tuple[str, Future[Entry]]] = deque()
        sources = enumerate(todo)

        def feed() -> None:
            for n, source in sources:
                unsettled = len(todo) - n + len(pending)  # this file, those after it, those in flight
                pending.append((source, self._submit(pool, source, self._threads_for(unsettled))))
                if len(pending) >= self.ahead:  # bounded: discovery outruns the workers
                    return

        try:
            while True:
                feed()
                if not pending:
                    break
                batch: list[Entry] = []
                try:
                    closes = None
                    while pending and len(batch) < SETTLE_BATCH:
                        wait = None if closes is None else max(0.0, closes - time.monotonic())
                        batch.append(pending[0][1].result(timeout=wait))
                        pending.popleft()
                        closes = closes or time.monotonic() + SETTLE_WINDOW
                        feed()
                except TimeoutError:  # the window closed: settle what has finished
                    pass
                except BrokenProcessPool:
                    # A worker died (a codec crashing on a malformed file, the
                    # OOM killer): retry what was in flight one file per pool,
                    # so only the file that kills its worker fails.
                    self._drop(pool, broken=True)
                    batch += [self._isolated(source) for source, _ in pending]
                    pending.clear()
                    pool = self._pool()
                self._settle(batch, len(todo))
        finally:
            for _, future in pending:  # an interrupted run: nothing more for the workers
                future.cancel()
            self._drop(pool, broken=False)
        shutil.rmtree(run_staging, ignore_errors=True)
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _pool(self) -> Executor:
        return self.shared.get() if self.shared else _new_pool(self.workers)

    def _drop(self, pool: Executor, *, broken: bool) -> None:
        """Done with `pool`: shut down, unless it is shared and sound."""
        if self.shared is None:
            pool.shutdown(wait=not broken, cancel_futures=True)
        elif broken:
            self.shared.discard(pool)

    def _threads_for(self, unsettled: int) -> int:
        """Threads for the next file when `unsettled` files are left to finish."""
        return max(self.threads, self.workers * self.threads // max(1, min(self.workers, unsettled)))

    def _submit(self, pool: Executor, source: str, threads: int) -> Future[Entry]:
        """Submit one file; a pool found broken answers through the future,
        like the files already in flight, so one handler deals with both."""
        try:
            return pool.submit(self.worker, source, self._staging, self.settings, self.crosscheck, threads)
        except BrokenProcessPool as exc:
            future: Future[Entry] = Future()
            future.set_exception(exc)
            return future

    def _isolated(self, source: str) -> Entry:
        """Run one file in a pool of its own; a crash fails that file alone."""
        with _new_pool(1) as pool:
            try:
                return self._submit(pool, source, self.threads).result()
            except BrokenProcessPool:
                return Entry(source, IngestOutcome.FAILED, Reason.WORKER_CRASHED.value,
                             "the worker process died on this file (a decoder crash or out of memory)")

    def _settle(self, batch: list[Entry], total: int) -> None:
        """Decide the outcome of finished files, place their objects, make
        the placements durable, then index them all in one transaction."""
        records = []
        placed: dict[str, tuple[Version, str]] = {}  # SOP UID -> version and path placed in this batch
        for entry in batch:
            staged, entry.staged = entry.staged, None
            record = Record(ledger=entry.ledger())
            if staged:
                record = self._place(entry, staged, placed)
            records.append(record)
        self.archive.flush()  # objects durable before any row points at them
        self.archive.index.record(records)
        for entry in batch:
            self.report.add(entry, keep=self.keep_entries)
            if self.on_entry:
                self.on_entry(entry)
            if self.progress:
                self.progress(self.report, self.report.files, total)

    def _place(self, entry: Entry, staged: Staged, placed: dict[str, tuple[Version, str]]) -> Record:
        """Settle a staged object by the re-send policy: drop it (a duplicate),
        set it aside (a conflict) or place it as the instance (replacing
        the archived copy, set aside first); the index record of it."""
        sop = entry.sop_uid
        assert sop is not None and entry.object_digest is not None  # every staged entry has them
        stored = entry.outcome, entry.reason  # what the instance row says, whatever the ledger says
        newcomer = Version.of(entry.object_digest, entry.pixel_digest, staged.dicom_json, entry.reason)
        archived = placed.get(sop) or self._archived(sop)
        decision = resend(archived[0], newcomer, self.on_conflict) if archived else None
        if decision is not None and decision.action is Resend.DUPLICATE:
            self.archive.discard(Path(staged.path))
            entry.outcome, entry.detail = IngestOutcome.DUPLICATE, decision.detail
            return Record(ledger=entry.ledger())
        if decision is not None and decision.action is Resend.CONFLICT:
            relative = conflict_path(sop, entry.object_digest)
            self.archive.place(Path(staged.path), relative)
            entry.outcome, entry.reason = IngestOutcome.CONFLICT, decision.reason.value
            entry.detail = f"{decision.detail}; this copy is kept at {relative} for review"
            return Record(ledger=entry.ledger(), conflict=(relative, entry.object_digest, entry.pixel_digest))
        conflict = None
        if archived is not None and decision is not None:  # replace: the old copy goes aside first
            previous, relative = archived
            aside = self._set_aside(sop, previous, relative)
            entry.outcome, entry.reason = IngestOutcome.REPLACED, decision.reason.value
            entry.detail = f"{decision.detail}; the previous copy is kept at {aside}"
            conflict = (aside, previous.object_digest, previous.pixel_digest)
        else:
            assert entry.study_uid is not None and entry.series_uid is not None
            relative = object_path(entry.study_uid, entry.series_uid, sop)
        self.archive.place(Path(staged.path), relative)
        placed[sop] = (newcomer, relative)
        instance = InstanceRow(
            sop, entry.series_uid, entry.study_uid, relative, staged.transfer_syntax, stored[0], stored[1],
            entry.bytes_out, entry.object_digest, entry.pixel_digest, entry.frames, staged.dicom_json,
        )
        return Record(ledger=entry.ledger(), instance=instance, frames=staged.frames, study_json=staged.study_json,
                      series_json=staged.series_json, conflict=conflict)

    def _archived(self, sop: str) -> tuple[Version, str] | None:
        """The archived copy of `sop` and its path, if there is one."""
        row = self.archive.index.instance(sop)
        if row is None:
            return None
        return Version.of(row.object_digest, row.pixel_digest, row.dicom_json, row.reason), row.path

    def _set_aside(self, sop: str, previous: Version, relative: str) -> str:
        """Copy the object at `relative` (the version `previous`) to its
        place beside the instance, where a replaced copy is kept, before
        the replacement takes its path. A rerun after a crash finds it
        there already (named by its digest) and leaves it."""
        aside = conflict_path(sop, previous.object_digest)
        if not self.archive.exists(aside):
            staged = Path(self._local, f"{uuid.uuid4().hex}.aside")
            size = self.archive.size(relative)
            with open(staged, "wb") as out:
                for start in range(0, size, _COPY_CHUNK):
                    out.write(self.archive.read(relative, start, min(size, start + _COPY_CHUNK)))
            self.archive.place(staged, aside)
            self.archive.flush()  # durable before the replacement overwrites the original
        return aside


def ingest(paths: Iterable[str | os.PathLike[str]], archive: Archive, **options: Any) -> IngestReport:
    """Ingest every DICOM file under `paths` into `archive` (see `Ingest`)."""
    return Ingest(archive, **options).run(paths)
