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

The heap that one arena grows does not shrink by itself: frames, tiles and
codestreams of ever other sizes leave holes that glibc keeps, so a worker's
memory grew with the number of frames of an instance (on 2457x1890 frames,
the heap held 42 MB free after 6 frames and 137 MB after 66). Every
`RELEASE_EVERY` bytes of frames, `release_freed` hands the heap's free pages
back (glibc's `malloc_trim`); pages that are used again fault in afresh,
so it is not done per frame (benchmarks/memory_by_frames.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
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
#: Frame bytes between two returns of free heap pages to the system.
RELEASE_EVERY = 32 << 20
_unreleased = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (it has `malloc_trim`); None elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def tune_allocator() -> None:
    """Cap glibc's malloc arenas at one (see the module docstring). Idempotent."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    libc = _glibc()
    if libc is not None and not os.environ.get("MALLOC_ARENA_MAX"):  # unless the user decided already
        libc.mallopt(_M_ARENA_MAX, 1)


def release_freed(frame_bytes: int) -> None:
    """Count one frame of `frame_bytes` done; once `RELEASE_EVERY` bytes
    have passed since the last time, return the heap's free pages to the
    system (see the module docstring). A no-op where glibc is not the allocator."""
    global _unreleased
    _unreleased += frame_bytes
    if _unreleased >= RELEASE_EVERY:
        _unreleased = 0
        libc = _glibc()
        if libc is not None:
            libc.malloc_trim(0)


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
