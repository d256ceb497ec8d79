"""Process-wide execution resources: the frame thread pool and the allocator.

The pool lives as long as the process, so its threads (and the memory the
codecs allocated in them) stay warm from one instance to the next.

glibc gives every thread its own malloc arena. OpenJPH allocates tens of MB
per frame, so in a pool thread each frame paid for fresh pages: measured
here, 2048x2048 encodes took 40 ms on a pool thread against 32 ms on the
main thread. Capping glibc at one arena (`M_ARENA_MAX`) lets every thread
reuse the same warm heap; with two or three busy threads the shared malloc
lock costs nothing measurable. This is a process-wide setting, applied the
first time a pool is needed; it is skipped where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

import imagecodecs
import numpy as np

from transcode.codecs import htj2k

T = TypeVar("T")

_M_ARENA_MAX = -8
_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}
_tuned = False


def tune_allocator() -> None:
    """Cap glibc's malloc arenas at one (see the module docstring). Idempotent."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    name = ctypes.util.find_library("c")
    if not name or os.environ.get("MALLOC_ARENA_MAX"):  # the user decided already
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def warm_up_codecs() -> None:
    """Encode and decode once with OpenJPH and OpenJPEG, gray and colour,
    tiled, on the calling thread, before any pool thread starts.

    Seen here, rarely: with OpenJPH and OpenJPEG running on three threads at
    once, a decode failed or returned other pixels ("ojph error" swallowed
    inside imagecodecs) in 2 of 135 fresh stress processes; verification
    caught it. With this first use done on one thread, 0 of 140: weak
    evidence that first use (process-wide kernel selection) is the cause,
    which is why `transcode_file` also proves a failed instance again on
    one thread. About a millisecond, once per process.
    """
    settings = htj2k.EncodeSettings(tile_threshold=32, tile_size=32)
    gray = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    for frame, colour in ((gray, False), (np.zeros((40, 40, 3), np.uint8), True)):
        data, index = htj2k.encode(frame, colour_transform=colour, settings=settings)
        htj2k.decode(data)
        htj2k.decode(data[: index.level_end(0)], level=0, decompositions=index.decompositions)
        imagecodecs.jpeg2k_decode(data, numthreads=1)


class InlineExecutor(Executor):
    """Runs each task at once on the calling thread. With one thread per
    instance (ingest workers sharing the cores out), a pool would only add
    hand-offs and a second busy thread to a process meant to use one core."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered through the future, as a pool would
            future.set_exception(exc)
        return future


def frame_pool(workers: int) -> Executor:
    """The process's executor for frame encoding and checks: `workers`
    threads, or the calling thread alone when `workers` is 1."""
    if workers <= 1:
        return InlineExecutor()
    with _lock:
        pool = _pools.get(workers)
        if pool is None:
            tune_allocator()
            warm_up_codecs()  # before any pool thread touches a codec
            pool = _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="htj2k")
        return pool
