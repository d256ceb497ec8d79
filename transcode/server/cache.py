"""Frames read from an object store, kept in memory for the next request.

Viewers ask for the same frames again and again (scrolling back and forth
through a series, a second reader opening the same study), and from an
object store every read is a request over the network: measured here, a
SeaweedFS on the same machine spent 1.0-2.4 ms of CPU per frame GET, and a
remote S3 answers in tens of milliseconds. A folder archive has the
kernel's page cache for this; an object store archive has this cache, one
per server process (Orthanc keeps one for the same reason, its
`MaximumStorageCacheSize`).

- Bounded by bytes, the least recently used run out first.
- Keyed by the object's path *and its recorded digest*: an object replaced
  under the same key (a re-send with `--on-conflict replace`) has another
  digest, so its old bytes are never taken for it.
- Only bytes that passed their integrity check are kept, and a hit is
  checked again before it is sent (`FrameReader.stored`): the cache never
  turns a damaged read into a served one.
- A frame's level prefixes all start where the frame starts: an entry holds
  the longest run read from that offset, and a shorter request is served
  from its start.

An `OrderedDict` under a lock rather than a library cache: the entries are
byte runs bounded by their total size and the longest run read wins, which
none of the count-bounded caches at hand do, in a few lines.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

#: Default budget of one server process (`transcode serve --read-cache-mb`).
DEFAULT_MB = 256

#: (object path, object digest, byte offset of the run in the object)
Key = tuple[str, str, int]


class ReadCache:
    """Byte runs read from stored objects, at most `max_bytes` of them."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("a read cache needs a budget of at least one byte")
        self.max_bytes = max_bytes
        self._runs: OrderedDict[Key, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes held now (never above `max_bytes`)."""
        return self._size

    def get(self, key: Key, length: int) -> bytes | None:
        """The run kept for `key` if it holds at least `length` bytes (it
        may hold more: the caller takes the first `length`), else None."""
        with self._lock:
            run = self._runs.get(key)
            if run is None or len(run) < length:
                return None
            self._runs.move_to_end(key)
            return run

    def put(self, key: Key, run: bytes) -> None:
        """Keep `run`, read (and checked) from `key`, unless a longer one is
        kept for it already; the least recently used go to make room. A run
        larger than the whole budget is not kept."""
        if len(run) > self.max_bytes:
            return
        with self._lock:
            kept = self._runs.get(key)
            if kept is not None:
                if len(kept) >= len(run):
                    return
                self._size -= len(kept)
            self._runs[key] = run
            self._runs.move_to_end(key)
            self._size += len(run)
            while self._size > self.max_bytes:
                _, dropped = self._runs.popitem(last=False)
                self._size -= len(dropped)
