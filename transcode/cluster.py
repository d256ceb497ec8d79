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

Workers write staged objects into the archive's staging folder, which the
coordinator then places: the folder must be the same path on every worker
(one machine, or a shared filesystem). `distributed` is imported here only,
and this module only when `--dask` is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
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
#: of ten times (per-file tasks of a few tens of milliseconds).
LOCAL_CONFIG = {
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.worker.memory.monitor-interval": "1s",
}


class ClusterAddressError(ValueError):
    """A `--dask` value that is neither `local:N` nor a scheduler address."""


class _DaskExecutor(Executor):
    """`submit(work, source, ...)` as a Dask task (impure: each call runs).
    Results reach the coordinator through `distributed`'s own
    `concurrent.futures` bridge (`Client.get_executor`), which waits on the
    client's event loop: no thread and no round trip per file.

    A dying worker makes the scheduler suspect every task assigned to it,
    the files queued behind the culprit too where the scheduler sends
    tasks ahead (its default; not with `LOCAL_CONFIG`). So a file given up
    on (`KilledWorker`) is sent once more as a new task: an innocent one
    then finishes, the culprit fails alone."""

    def __init__(self, client: Client) -> None:
        self._tasks = client.get_executor(pure=False)
        self._resend = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dask-resend")  # off the event loop

    def submit(self, fn: Callable[..., Entry], /, *args: Any, **kwargs: Any) -> Future[Entry]:  # type: ignore[override]
        result: Future[Entry] = Future()
        self._send(result, partial(fn, *args, **kwargs), str(args[0]), tries=2)
        return result

    def _send(self, result: Future[Entry], call: Callable[[], Entry], source: str, tries: int) -> None:
        task = self._tasks.submit(call)
        result.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)
        task.add_done_callback(lambda t: self._settle(t, result, call, source, tries))

    def _settle(self, task: Future[Entry], result: Future[Entry], call: Callable[[], Entry], source: str,
                tries: int) -> None:
        """Hand the finished task's outcome to `result`: the entry; for a
        task that killed its workers, another try or the file's failure;
        the worker function's own error, raised in the coordinator as a
        process pool does."""
        if result.done():  # cancelled by the coordinator
            return
        if task.cancelled():
            result.cancel()
            return
        error = task.exception()
        if error is None:
            result.set_result(task.result())
        elif isinstance(error, KilledWorker) and tries > 1:
            log.warning("%s: its workers died while it ran; trying it once more", source)
            self._resend.submit(self._send, result, call, source, tries - 1)
        elif isinstance(error, KilledWorker):
            result.set_result(Entry(source, IngestOutcome.FAILED, Reason.WORKER_CRASHED.value,
                                    "the worker process died on this file each time it was tried "
                                    "(a decoder crash or out of memory)"))
        else:
            result.set_exception(error)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the resend thread (the client belongs to `DaskPool`)."""
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
