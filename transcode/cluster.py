"""Ingest on a Dask cluster: the same `Ingest` run, with files sent to
`distributed` workers instead of local worker processes.

`DaskPool` has the interface of `pipeline.WorkerPool` (`workers`, `get`,
`discard`, `close`), so the pipeline keeps one path: discovery, the ledger,
settling in discovery order, placing, one index transaction per batch and
the progress bar all stay in the coordinator; only where `work` runs
differs. The executor `get` returns hands out `concurrent.futures.Future`s,
as a process pool does.

A worker lost mid-task costs nothing but time: the scheduler runs the task
again on another worker. A file that kills the worker each time (a decoder
crash, the OOM killer) ends, after the scheduler's `allowed-failures`,
as a `worker_crashed` failure of that file alone, never as a hung run.

Into an S3 archive, workers put each finished object into the bucket
themselves, under a staging key the coordinator's `place` moves to the
object's key server-side (`archive.objects`); into a folder archive they
write into its staging folder, which must then be the same path on every
worker (one machine, or a shared filesystem). `distributed` is imported
here only, and this module only when `--dask` is given.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.scheduler import KilledWorker

from transcode.entries import Entry, IngestOutcome
from transcode.policy import Reason

log = logging.getLogger(__name__)

LOCAL = "local:"

#: Dask settings for a `local:N` cluster, and recommended for a scheduler
#: and workers started by hand (README). A worker holds only the task it
#: runs (saturation 1.0): when a worker dies the scheduler suspects every
#: task the worker held, so a file queued behind a crashing one would be
#: blamed with it. The workers check their memory once a second instead
#: of ten times (per-file tasks of a few tens of milliseconds). And their
#: processes start without Dask's `MALLOC_TRIM_THRESHOLD_=65536`: a fixed
#: 64 KiB threshold also turns off glibc's adaptive mmap threshold, so every
#: frame-sized buffer the codecs allocate is mapped and unmapped anew and
#: its pages fault in again: measured here, per 512x512 CT file, 1,040 page
#: faults and 17-19 ms with it, 13 faults and 13 ms without (`None` unsets
#: it). The heap is given back to the system by `runtime.release_freed` instead.
LOCAL_CONFIG = {
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


class ClusterAddressError(ValueError):
    """A `--dask` value that is neither `local:N` nor a scheduler address."""


#: A task carries consecutive files until their sizes add up to this many
#: bytes or it holds `BATCH_FILES` of them: one scheduler round trip (and
#: one result message) serves several small files, while a large one (an
#: MR series' object, a tomosynthesis) still travels alone and the tail of
#: a run is not left to one worker.
BATCH_BYTES = 16 << 20
BATCH_FILES = 8
#: How long a part-filled task waits for more files before it is sent
#: (the end of a run, a slow discovery).
BATCH_WAIT = 0.005


def _run_batch(calls: list[Callable[[], Entry]]) -> list[Entry | Exception]:
    """Runs on a Dask worker: each file's call in turn; a call's own error
    is returned in its place, so it costs that file alone."""
    out: list[Entry | Exception] = []
    for call in calls:
        try:
            out.append(call())
        except Exception as exc:  # noqa: BLE001 (any error of the worker function: raised for its file in the coordinator)
            out.append(exc)
    return out


@dataclass(frozen=True, slots=True)
class _File:
    """One submitted file: its call, its source (for messages) and the
    future the coordinator waits on."""

    result: Future[Entry]
    call: Callable[[], Entry]
    source: str


class _DaskExecutor(Executor):
    """`submit(work, source, ...)` gathers files into tasks (`BATCH_BYTES`,
    `BATCH_FILES`, `BATCH_WAIT`), each an impure Dask task; every file
    still gets its own `concurrent.futures.Future`, as from a process pool.
    Results reach the coordinator through `distributed`'s own
    `concurrent.futures` bridge (`Client.get_executor`), which waits on the
    client's event loop: no thread and no round trip per task.

    A dying worker makes the scheduler suspect every task assigned to it,
    the tasks queued behind the culprit too where the scheduler sends
    tasks ahead (its default; not with `LOCAL_CONFIG`). So the files of a
    task given up on (`KilledWorker`) are sent once more, each as a task of
    its own: the innocent ones then finish, the culprit fails alone."""

    def __init__(self, client: Client) -> None:
        self._tasks = client.get_executor(pure=False)
        self._resend = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dask-resend")  # off the event loop
        self._lock = threading.Lock()
        self._gathered: list[_File] = []
        self._bytes = 0
        self._timer: threading.Timer | None = None

    def submit(self, fn: Callable[..., Entry], /, *args: Any, **kwargs: Any) -> Future[Entry]:  # type: ignore[override]
        file = _File(Future(), partial(fn, *args, **kwargs), str(args[0]))
        try:
            size = os.stat(file.source).st_size
        except OSError:  # the worker reports why it cannot be read
            size = 0
        with self._lock:
            self._gathered.append(file)
            self._bytes += size
            full = self._bytes >= BATCH_BYTES or len(self._gathered) >= BATCH_FILES
            if not full and self._timer is None:
                self._timer = threading.Timer(BATCH_WAIT, self._flush)
                self._timer.daemon = True
                self._timer.start()
        if full:
            self._flush()
        return file.result

    def _flush(self) -> None:
        """Send what is gathered as one task."""
        with self._lock:
            files, self._gathered, self._bytes = self._gathered, [], 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        files = [f for f in files if not f.result.cancelled()]
        if files:
            self._send(files, tries=2)

    def _send(self, files: list[_File], tries: int) -> None:
        """Submit `files` as one task. The files' futures refer to the task
        weakly: a cycle between them would keep the task's key wanted until
        the garbage collector ran, and the scheduler recomputes a wanted key
        whose worker dies, staging its files again after they settled."""
        task = self._tasks.submit(_run_batch, [f.call for f in files])
        sent = weakref.ref(task)

        def cancelled(_: Future[Entry]) -> None:
            if all(f.result.cancelled() for f in files) and (task := sent()) is not None:  # none wanted
                task.cancel()

        for f in files:
            f.result.add_done_callback(cancelled)
        task.add_done_callback(lambda t: self._settle(t, files, tries))

    def _settle(self, task: Future[list[Entry | Exception]], files: list[_File], tries: int) -> None:
        """Hand the finished task's outcomes to the files' futures: each
        entry, or the worker function's error for its file; for a task that
        killed its workers, each file once more alone, or (alone already)
        the file's failure. Files the coordinator cancelled meanwhile are
        left as they are."""
        if task.cancelled():
            for f in files:
                f.result.cancel()
            return
        error = task.exception()
        if error is None:
            for f, outcome in zip(files, task.result(), strict=True):
                if f.result.done():
                    continue
                if isinstance(outcome, Exception):
                    f.result.set_exception(outcome)
                else:
                    f.result.set_result(outcome)
            return
        files = [f for f in files if not f.result.done()]
        if not isinstance(error, KilledWorker):
            for f in files:
                f.result.set_exception(error)
            return
        # Its traceback holds the frame that holds the task: a cycle that
        # keeps the task's key wanted (see `_send`). It says nothing more.
        error.__traceback__ = None
        if tries > 1:
            if files:
                log.warning("%s: its workers died while it ran; trying each of its %d file(s) once more, alone",
                            files[0].source, len(files))
            for f in files:
                self._resend.submit(self._send, [f], tries - 1)
            return
        for f in files:
            f.result.set_result(Entry(f.source, IngestOutcome.FAILED, Reason.WORKER_CRASHED.value,
                                      "the worker process died on this file each time it was tried "
                                      "(a decoder crash or out of memory)"))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the batch timer and the resend thread (the client belongs to `DaskPool`)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        self._resend.shutdown(wait=wait)


class DaskPool:
    """Files go to the Dask cluster at `address`: `local:N` starts a
    `LocalCluster` of N worker processes on loopback, anything else is a
    scheduler address (`tcp://host:8786`). Each Dask worker thread runs one
    file at a time (with `Ingest.threads` threads of its own over frames);
    `workers` is the cluster's total of them."""

    def __init__(self, address: str) -> None:
        self._cluster: LocalCluster | None = None
        # distributed sets its loggers to INFO: here they follow -v / --log-level like ours.
        logging.getLogger("distributed").setLevel(logging.getLogger().getEffectiveLevel())
        if address.startswith(LOCAL):
            try:
                count = int(address.removeprefix(LOCAL))
            except ValueError:
                count = 0
            if count < 1:
                raise ClusterAddressError(f"{address}: local:N takes a number of worker processes, 1 or more")
            # Loopback only, the scheduler's HTTP endpoint on a free port:
            # nothing is reachable from outside this machine, nothing clashes.
            with dask.config.set(LOCAL_CONFIG):
                self._cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                             host="127.0.0.1", dashboard_address="127.0.0.1:0")
            address = self._cluster.scheduler_address
        elif "://" not in address:
            raise ClusterAddressError(f"{address}: --dask takes local:N or a scheduler address (tcp://host:8786)")
        self._client = Client(address)
        info = self._client.scheduler_info(n_workers=-1)
        self.workers = max(1, sum(w["nthreads"] for w in info["workers"].values()))
        # Two full tasks per worker thread: one running, one waiting at the scheduler for it.
        self.ahead = 2 * BATCH_FILES * self.workers
        self.remote = True  # workers may be other machines: they put into a remote store themselves
        self._executor = _DaskExecutor(self._client)
        log.info("Dask cluster %s: %d worker threads", address, self.workers)

    def get(self) -> Executor:
        return self._executor

    def discard(self, pool: Executor) -> None:
        """Never needed: a Dask cluster replaces lost workers itself."""

    def close(self) -> None:
        self._executor.shutdown()
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
