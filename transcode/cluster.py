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
from concurrent.futures import CancelledError, Executor, Future
from typing import Any

from distributed import Client, LocalCluster
from distributed import Future as DaskFuture
from distributed.scheduler import KilledWorker

from transcode.entries import Entry, IngestOutcome
from transcode.policy import Reason

log = logging.getLogger(__name__)

LOCAL = "local:"


class ClusterAddressError(ValueError):
    """A `--dask` value that is neither `local:N` nor a scheduler address."""


class _DaskExecutor(Executor):
    """`submit(work, source, ...)` as a Dask task (impure: each call runs)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(self, fn: Callable[..., Entry], /, *args: Any, **kwargs: Any) -> Future[Entry]:  # type: ignore[override]
        source = args[0]
        task = self._client.submit(fn, *args, pure=False, **kwargs)
        result: Future[Entry] = Future()
        result.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)
        task.add_done_callback(lambda t: _settle(t, result, source))
        return result

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing of its own to stop: the client belongs to `DaskPool`."""


def _settle(task: DaskFuture, result: Future[Entry], source: str) -> None:
    """Hand the task's outcome to `result`; a task that killed its workers
    becomes that file's failure."""
    if result.done():  # cancelled by the coordinator
        return
    try:
        result.set_result(task.result())
    except KilledWorker:
        result.set_result(Entry(source, IngestOutcome.FAILED, Reason.WORKER_CRASHED.value,
                                "the worker process died on this file each time it was tried "
                                "(a decoder crash or out of memory)"))
    except CancelledError:
        result.cancel()
    except Exception as exc:  # noqa: BLE001  the worker function's own error: raised here, as a pool does
        result.set_exception(exc)


class DaskPool:
    """Files go to the Dask cluster at `address`: `local:N` starts a
    `LocalCluster` of N worker processes on loopback, anything else is a
    scheduler address (`tcp://host:8786`). Each Dask worker thread runs one
    file at a time (with `Ingest.threads` threads of its own over frames);
    `workers` is the cluster's total of them."""

    def __init__(self, address: str) -> None:
        self._cluster: LocalCluster | None = None
        if address.startswith(LOCAL):
            try:
                count = int(address.removeprefix(LOCAL))
            except ValueError:
                count = 0
            if count < 1:
                raise ClusterAddressError(f"{address}: local:N takes a number of worker processes, 1 or more")
            # Loopback only, the scheduler's HTTP endpoint on a free port:
            # nothing is reachable from outside this machine, nothing clashes.
            self._cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address="127.0.0.1:0")
            address = self._cluster.scheduler_address
        elif "://" not in address:
            raise ClusterAddressError(f"{address}: --dask takes local:N or a scheduler address (tcp://host:8786)")
        self._client = Client(address)
        info = self._client.scheduler_info(n_workers=-1)
        self.workers = max(1, sum(w["nthreads"] for w in info["workers"].values()))
        log.info("Dask cluster %s: %d worker threads", address, self.workers)

    def get(self) -> Executor:
        return _DaskExecutor(self._client)

    def discard(self, pool: Executor) -> None:
        """Never needed: a Dask cluster replaces lost workers itself."""

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
